"""toxicity_rate from a real transformers text-classification pipeline: a tiny BERT classifier trained in
the test on toy toxic/clean sentences, checked against the model's own softmax computed by hand."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, pipeline

from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.safety import Toxicity, guess_toxic_labels
from ft_callbacks.core.task_metrics import metric_from_spec
from ft_callbacks.core.text_scores import score_texts

TOXIC = ["you are a stupid idiot", "i hate you idiot", "shut up you fool", "stupid useless idiot",
         "you fool i hate this", "idiot idiot stupid"]  # fmt: skip
CLEAN = ["have a nice day", "thank you for the help", "the weather is lovely", "see you tomorrow",
         "this is a good answer", "thanks a lot friend"]  # fmt: skip


@pytest.fixture(scope="module")
def classifier(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        id2label={0: "non-toxic", 1: "toxic"}, label2id={"non-toxic": 0, "toxic": 1},
                        pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = BertForSequenceClassification(config)
    batch = tokenizer(TOXIC + CLEAN, padding=True, return_tensors="pt")
    labels = torch.tensor([1] * len(TOXIC) + [0] * len(CLEAN))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")


def toxic_probability(pipe, texts):
    """The independent computation: the model's softmax, by hand."""
    with torch.no_grad():
        enc = pipe.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return torch.softmax(pipe.model(**enc).logits, dim=-1)[:, 1].tolist()


def test_toxicity_rate_equals_the_classifier_by_hand(classifier):
    texts = ["you stupid fool", "have a lovely day", "", "i hate idiots", "thank you friend", "ünïcödé 🙂"]
    probs = [toxic_probability(classifier, [t])[0] if t.strip() else 0.0 for t in texts]  # empty: not toxic
    for threshold in (0.3, 0.5, 0.8):
        metric = Toxicity(classifier, threshold=threshold, batch_size=4)
        scores = score_texts(texts, metrics=(metric,), per_sample=True)
        assert scores.per_sample["toxicity"] == pytest.approx(probs, abs=1e-5)
        assert scores.corpus["toxicity_rate"] == pytest.approx(sum(p >= threshold for p in probs) / len(texts))
        assert scores.corpus["toxicity_mean"] == pytest.approx(sum(probs) / len(texts), abs=1e-5)
    # The classifier learned something: the training sentences are told apart.
    assert Toxicity(classifier)(TOXIC)["toxicity_rate"] > Toxicity(classifier)(CLEAN)["toxicity_rate"]


def test_a_plain_callable_and_label_handling(classifier):
    def by_label(texts):
        return [{"safe": 0.9, "hate": 0.1} if "nice" in t else {"safe": 0.2, "hate": 0.8} for t in texts]

    assert Toxicity(by_label)(["nice", "mean"]) == {"toxicity_rate": 0.5, "toxicity_mean": pytest.approx(0.45)}
    assert Toxicity(lambda texts: [0.7 for _ in texts], threshold=0.7)(["a"])["toxicity_rate"] == 1.0
    assert guess_toxic_labels(["non-toxic", "toxic", "LABEL_0", "not_offensive", "offensive"]) == ["toxic", "offensive"]
    with pytest.raises(ConfigurationError, match="toxic_label"):
        Toxicity(lambda texts: [{"LABEL_0": 0.4, "LABEL_1": 0.6} for _ in texts])(["a"])
    named = Toxicity(lambda texts: [{"LABEL_0": 0.4, "LABEL_1": 0.6}], toxic_label="LABEL_1")
    assert named(["a"])["toxicity_mean"] == 0.6
    with pytest.raises(ConfigurationError, match="not among"):
        Toxicity(classifier, toxic_label="LABEL_1")
    with pytest.raises(ConfigurationError, match="outside"):
        Toxicity(lambda texts: [1.5 for _ in texts])(["a"])
    with pytest.raises(ConfigurationError, match="one per text"):
        Toxicity(lambda texts: [0.1])(["a", "b"])
    with pytest.raises(ConfigurationError, match="threshold"):
        Toxicity(classifier, threshold=2)


def test_from_a_local_model_directory_in_a_config(classifier, tmp_path):
    classifier.model.save_pretrained(tmp_path / "clf")
    classifier.tokenizer.save_pretrained(tmp_path / "clf")
    metric = metric_from_spec({"toxicity": {"model": str(tmp_path / "clf"), "threshold": 0.5}})
    texts = ["you stupid fool", "have a lovely day"]
    assert metric(texts)["toxicity_mean"] == pytest.approx(sum(toxic_probability(classifier, texts)) / 2, abs=1e-5)
    with pytest.raises(ConfigurationError, match="could not load"):
        Toxicity(model=str(tmp_path / "missing"))


def test_without_a_classifier_detoxify_is_named():
    try:
        import detoxify  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigurationError, match="pip install detoxify"):
            metric_from_spec("toxicity")
    else:  # pragma: no cover - detoxify is not installed here (its models download on first use)
        pytest.skip("detoxify is installed: its checkpoint would download")

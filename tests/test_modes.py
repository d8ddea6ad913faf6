"""Metric direction from the name, as whole tokens (issues #14 and #20): a table, plain strings."""

from __future__ import annotations

import pytest

from ft_callbacks.core.modes import infer_mode, is_mode_known

# Every name here was measured wrong (or is new) with substring matching: "wer" in "answer",
# "ratio" in "generation", "ece" in "recent" and "piece", "ratio" in "iteration".
TABLE = [
    ("eval_answer_f1", "max"),
    ("eval_generation_accuracy", "max"),
    ("eval_recent_accuracy", "max"),
    ("eval_f1_cancer", "max"),
    ("eval_recall_answer", "max"),
    ("eval_accuracy_iteration", "max"),
    ("eval_f1_piece", "max"),
    ("eval_loss", "min"),
    # The next wave's names: label tasks, task metrics, the judge, ForgettingGuard.
    ("eval_rmse", "min"), ("eval_entity_f1", "max"), ("eval_hamming_loss", "min"), ("eval_f1_samples", "max"),
    ("eval_json_valid_rate", "max"), ("eval_toxicity_rate", "min"), ("eval_self_bleu", "min"),
    ("eval_repetition_4", "min"), ("eval_distinct_2", "max"), ("eval_pass@5", "max"),
    ("eval_win_rate", "max"), ("eval_win_rate_lc", "max"), ("eval_judge_flip_rate", "min"),
    ("eval_judge_invalid_rate", "min"), ("eval_judge_score", "max"),
    ("eval_forgetting", "min"), ("eval_bench_arc_easy_acc", "max"), ("eval_bench_arc_easy_acc_delta", "max"),
    ("eval_bench_arc_easy_acc_stderr", "min"), ("eval_general_perplexity_ratio", "min"),
    ("eval_loss_ratio", "min"),
    ("eval_loss_gap", "min"),
    ("eval_perplexity", "min"),
    ("eval_bits_per_byte", "min"),
    ("eval_bits_per_token", "min"),
    ("eval_wer", "min"),
    ("eval_cer", "min"),
    ("eval_ece", "min"),
    ("eval_brier", "min"),
    ("eval_log_loss", "min"),
    ("eval_mae", "min"),
    ("eval_rmse", "min"),
    ("eval_mse", "min"),
    ("eval_mape", "min"),
    ("eval_r2", "max"),
    ("eval_rougeL", "max"),
    ("eval_rougeLsum", "max"),
    ("eval_bleu", "max"),
    ("eval_bertscore_f1", "max"),
    ("eval_win_rate", "max"),
    ("eval_judge_score", "max"),
    ("eval_invalid_rate", "min"),
    ("eval_json_valid_rate", "max"),
    ("eval_judge_invalid_rate", "min"),
    ("eval_perplexity_delta", "min"),
    ("eval_rougeL_delta", "max"),
    ("eval_token_loss", "min"),
    ("eval_train_loss", "min"),
    ("eval_f1_macro", "max"),
    ("eval_balanced_accuracy", "max"),
    ("eval_roc_auc", "max"),
    ("eval_error_rate", "min"),
    ("eval_a_loss", "min"),
    ("pass@1", "max"),
    ("eval_hamming_loss", "min"),
    ("eval_entity_f1", "max"),
    ("eval_self_bleu", "min"),
]


@pytest.mark.parametrize(("name", "mode"), TABLE)
def test_infer_mode_table(name, mode):
    assert infer_mode(name) == mode
    assert is_mode_known(name)


def test_a_name_that_says_nothing_is_max_with_one_warning_naming_mode(capsys):
    import ft_callbacks  # noqa: F401  (installs the console handler of the ft_callbacks logger)

    name = "eval_frobnication_xyz"
    assert not is_mode_known(name)
    assert infer_mode(name) == "max"
    assert infer_mode(name) == "max"
    warnings = [line for line in capsys.readouterr().out.splitlines() if name in line]
    assert len(warnings) == 1
    assert "mode='min'" in warnings[0]

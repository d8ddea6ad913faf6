"""The earlier name of `ft_callbacks.publish` (the one way out for every result); kept so that imports
written against it keep working."""

from .publish import *  # noqa: F403
from .publish import SINK, EvaluationContext, WandbSink, notice_once, publish, report_event  # noqa: F401

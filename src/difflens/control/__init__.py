"""Steering and closed-loop control during generation: scoped hooks on the residual stream."""

from difflens.control.evaluate import (
    ControlConfig,
    ControlEvaluation,
    evaluate_control,
    lexicon_measure,
)
from difflens.control.monitor import (
    Controller,
    GenerationConfig,
    MonitoredGeneration,
    MonitorEvent,
    Trace,
    generate_monitored,
)
from difflens.control.self_judge import (
    JudgeScores,
    SelfJudgeConfig,
    judge_sentences,
    self_judge_scores,
    self_judge_summary,
)
from difflens.control.state_probe import (
    ProbeConfig,
    ProbeFit,
    StateProbe,
    load_probe,
    score_texts,
    train_probe,
)
from difflens.control.steering import (
    SteeringVector,
    dose_response,
    generate,
    greedy_texts,
    steering,
)
from difflens.inputs.labelled import (
    LabelledText,
    first_human_turns,
    read_labelled,
    read_preference_pairs,
)
from difflens.models.hooks import register_residual_hook

__all__ = [
    "ControlConfig", "ControlEvaluation", "Controller", "GenerationConfig", "JudgeScores",
    "LabelledText", "MonitorEvent", "MonitoredGeneration", "ProbeConfig", "ProbeFit",
    "SelfJudgeConfig", "StateProbe", "SteeringVector", "Trace", "dose_response",
    "evaluate_control", "first_human_turns", "generate", "generate_monitored", "greedy_texts",
    "judge_sentences", "lexicon_measure", "load_probe", "read_labelled",
    "read_preference_pairs", "register_residual_hook", "score_texts", "self_judge_scores",
    "self_judge_summary", "steering", "train_probe",
]

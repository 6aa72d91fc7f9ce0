"""Steering and closed-loop control during generation: scoped hooks on the residual stream."""

from difflens.control.evaluate import (
    ControlConfig,
    ControlEvaluation,
    evaluate_control,
    lexicon_measure,
    organism_measure,
    organism_openings,
)
from difflens.control.monitor import (
    Controller,
    GenerationConfig,
    MonitoredGeneration,
    MonitorEvent,
    Trace,
    generate_monitored,
)
from difflens.control.probe import (
    LabelledText,
    ProbeConfig,
    ProbeFit,
    StateProbe,
    first_human_turns,
    load_probe,
    organism_labelled,
    read_labelled,
    read_preference_pairs,
    score_texts,
    train_probe,
)
from difflens.control.steering import dose_response, generate, register_residual_hook, steering

__all__ = [
    "ControlConfig", "ControlEvaluation", "Controller", "GenerationConfig", "LabelledText",
    "MonitorEvent", "MonitoredGeneration", "ProbeConfig", "ProbeFit", "StateProbe", "Trace",
    "dose_response", "evaluate_control", "first_human_turns", "generate", "generate_monitored",
    "lexicon_measure", "load_probe", "organism_labelled", "organism_measure",
    "organism_openings", "read_labelled", "read_preference_pairs", "register_residual_hook",
    "score_texts", "steering", "train_probe",
]

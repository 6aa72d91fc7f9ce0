"""Steering and closed-loop control during generation: scoped hooks on the residual stream."""

from difflens.control.steering import dose_response, generate, register_residual_hook, steering

__all__ = ["dose_response", "generate", "register_residual_hook", "steering"]

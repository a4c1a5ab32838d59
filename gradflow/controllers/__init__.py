"""Step-size controllers of the flow: PID set-up (:mod:`~gradflow.controllers.pid`), the kink-tolerant
controller of ReLU fields (:mod:`~gradflow.controllers.kink`) and the step budget and no-progress
stop wrapped around either (:mod:`~gradflow.controllers.guard`)."""

from .guard import STALL_ULPS, StepGuard
from .kink import KINK_ACCEPT, KinkPIDController
from .pid import (
    IMPLICIT_CONTROLLER,
    finite_rms_norm,
    fresh_controller_state,
    initial_step,
    nan_to_inf,
    step_controller,
)

__all__ = ["IMPLICIT_CONTROLLER", "KINK_ACCEPT", "KinkPIDController", "STALL_ULPS", "StepGuard", "finite_rms_norm",
           "fresh_controller_state", "initial_step", "nan_to_inf", "step_controller"]

r"""The gradient flow dW/dt = −∇L(W) of :func:`gradflow.simulate_flow`, one concept per module, top down:

* :mod:`~gradflow.flow.simulate`: the entry point, its checks, and the plan of a run;
* :mod:`~gradflow.flow.driver`: a run as a sequence of compiled segments (checkpoints, progress, ``solver='auto'``);
* :mod:`~gradflow.flow.assemble`: the segments' output as a :class:`gradflow.FlowResult`;
* :mod:`~gradflow.flow.segment`: one compiled ``diffrax.diffeqsolve``;
* :mod:`~gradflow.flow.record`: what is saved along the flow;
* :mod:`~gradflow.flow.sliding_solver`: the diffrax solver of the sliding field;
* :mod:`~gradflow.flow.stiffness`: the stiffness check of ``solver='auto'``;
* :mod:`~gradflow.flow.field`: the vector field in either clock, −∇L or the sliding field.
"""

from .simulate import CLOCKS, simulate_flow

__all__ = ["simulate_flow", "CLOCKS"]

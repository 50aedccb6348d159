"""Layer 5, the compiler: runtime objects from a graph, the meta-device dry run, and generated
step functions (one per update) with derived grad modes."""

from dgraph.compiler.codegen import Program, UpdatePlan, compile_graph
from dgraph.compiler.instantiate import Instances, TapRecorder, instantiate

__all__ = ["Instances", "Program", "TapRecorder", "UpdatePlan", "compile_graph", "instantiate"]

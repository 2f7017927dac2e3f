"""Export-side optimization of deploy packages: graph simplification, FP16, INT8 PTQ (QDQ),
per-layer sensitivity and the NaN/Inf guard (``bevdeploy optimize``).

Never imported by the runtime: an optimized package is an ordinary package, run by the same
``Pipeline`` as the FP32 one.
"""

from bevdeploy.optimize.int8 import Int8Options
from bevdeploy.optimize.writer import (
    CalibrationSource, OptimizeOptions, OptimizeResult, optimize_package,
)

__all__ = ["CalibrationSource", "Int8Options", "OptimizeOptions", "OptimizeResult",
           "optimize_package"]

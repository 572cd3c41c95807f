"""fusedopt: fused single-pass optimizer kernels for PyTorch.

Change ``torch.optim.AdamW`` to ``fusedopt.AdamW``; arguments, param groups, lr schedulers, GradScaler and
state_dict work as they did. Native extensions are loaded lazily, at the first optimizer that needs one.
"""

from fusedopt.adagrad import Adagrad
from fusedopt.adam import Adam, AdamW
from fusedopt.backends import available_backends
from fusedopt.clip import clip_grad_norm_
from fusedopt.rmsprop import RMSprop

__version__ = "0.1.0"

__all__ = ["Adam", "AdamW", "RMSprop", "Adagrad", "available_backends", "clip_grad_norm_", "__version__"]

"""``PhysicsModel`` and its loaders: what users, and every later stage, call to turn a run,
checkpoint or export into a model that rolls out in physical units.

    from physfm.inference import PhysicsModel
    model = PhysicsModel.from_pretrained("runs/quickstart/pretrain")   # AR or diffusion, by run.json kind
"""

from physfm.inference.ar_model import ARPhysicsModel
from physfm.inference.diffusion_model import DiffusionPhysicsModel
from physfm.inference.loading import export_model, load_ar_model, load_model, resolve_checkpoint
from physfm.inference.physics_model import PhysicsModel

__all__ = [
    "ARPhysicsModel",
    "DiffusionPhysicsModel",
    "PhysicsModel",
    "export_model",
    "load_ar_model",
    "load_model",
    "resolve_checkpoint",
]

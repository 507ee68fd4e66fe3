"""core: a numpy trainer for multilayer perceptrons.

It exposes hooks (:mod:`core.callbacks`) and never imports gradmon.

>>> import core
>>> model = core.Sequential([core.Dense(2, 64, init="he_normal"), core.ReLU(), core.Dense(64, 3)], seed=0)
>>> trainer = core.Trainer(model, loss="cross_entropy", optimizer=core.Adam(lr=1e-3), batch_size=32)
"""

from core.activations import ACTIVATIONS, ELU, LeakyReLU, ReLU, Sigmoid, Tanh, get_activation
from core.callbacks import Callback, CallbackList, LayerInfo, Objective, RunInfo, StepState
from core.clipping import clip_by_global_norm, clip_by_value, global_norm
from core.data import Dataset, load_dataset
from core.initializers import INITIALIZERS, get_initializer
from core.layers import BatchNorm, Context, Dense, Dropout, Layer
from core.losses import LOSSES, get_loss
from core.model import Sequential
from core.objective import BatchObjective
from core.optimizers import OPTIMIZERS, SGD, AdaGrad, Adam, Optimizer, RMSprop, get_optimizer
from core.trainer import Trainer, TrainingHistory

__all__ = [
    "ACTIVATIONS", "ELU", "LeakyReLU", "ReLU", "Sigmoid", "Tanh", "get_activation",
    "Callback", "CallbackList", "LayerInfo", "Objective", "RunInfo", "StepState",
    "clip_by_global_norm", "clip_by_value", "global_norm", "Dataset", "load_dataset", "INITIALIZERS", "get_initializer",
    "BatchNorm", "Context", "Dense", "Dropout", "Layer", "LOSSES", "get_loss", "Sequential",
    "BatchObjective", "OPTIMIZERS", "SGD", "AdaGrad", "Adam", "Optimizer", "RMSprop", "get_optimizer",
    "Trainer", "TrainingHistory",
]
__version__ = "0.1.0"

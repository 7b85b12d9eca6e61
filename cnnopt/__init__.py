"""cnnopt: hyperparameter studies of PyTorch CNN image classifiers, built on Optuna."""

__version__ = "0.1.0"

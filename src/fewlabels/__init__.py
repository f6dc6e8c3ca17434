"""fewlabels: image models from many unlabeled images and a few labels."""

__version__ = "0.1.0"

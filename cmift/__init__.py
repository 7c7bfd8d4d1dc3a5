"""cmift: fine-tune transformer classifiers on GLUE with CE, CMI and distillation objectives."""

__version__ = "0.1.0"

"""Configuration: the schema (schema.py), method specs (spec.py), validation (validate.py) and
run identity (identity.py). Free of torch: the command line's fast path goes through here."""

from cmift.config.spec import ConfigError

__all__ = ["ConfigError"]

"""Entry points: `cmift` (Hydra app) and `python -m cmift`. Nothing else lives here.

Only the config schema is imported up front: torch and transformers load inside the job, so
`cmift --help` and config errors answer fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cmift.config import CONF_DIR, ConfigError, register_configs, register_resolvers

register_configs()
register_resolvers()


def _fail(message: str) -> None:
    print(f"cmift: error: {message}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _job(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from cmift.runs import claim_run_dir, finished_ok, release_run_dir
    from cmift.tasks import DataError

    base = Path(HydraConfig.get().runtime.output_dir)
    if finished_ok(base) and not cfg.rerun:
        print(f"cmift: {base} already finished ok; skipped (rerun=true runs it again)")
        return
    run_dir = claim_run_dir(base)
    try:
        from cmift.train import run

        run(cfg, run_dir)
    except (ConfigError, DataError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail(f"interrupted; partial run recorded in {run_dir}")
    finally:
        release_run_dir(run_dir)


def main() -> None:
    _job()


if __name__ == "__main__":
    main()

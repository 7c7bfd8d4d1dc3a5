"""A non-editable install works: the wheel carries conf/ (as cmift/conf) and the local GLUE
metric module, so `cmift` runs from anywhere, not only from the source tree."""

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_and_runs_outside_the_source_tree(fake_glue, tmp_path):
    # built from a copy: a stale build/ folder in the checkout would hide a missing package
    source = tmp_path / "source"
    for part in ("cmift", "conf"):
        shutil.copytree(ROOT / part, source / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                            "-o", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = list((tmp_path / "dist").glob("cmift-*.whl"))
    # every subpackage of the source tree is in the wheel (a package list that lags behind a
    # new folder breaks only non-editable installs, and only when that method is chosen)
    shipped = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.relative_to(ROOT)) for p in (ROOT / "cmift").rglob("__init__.py")}
    assert packages <= shipped, sorted(packages - shipped)
    # a fresh venv that sees this interpreter's packages (torch & co.) but not the checkout
    venv.create(tmp_path / "venv", system_site_packages=True, with_pip=False)
    python = tmp_path / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True).stdout.strip()
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                                "--target", site, str(wheel)], capture_output=True, text=True,
                               timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    where = subprocess.run([str(python), "-c", "import cmift, cmift.config.schema as s; "
                            "print(cmift.__file__); print(s.CONF_DIR)"],
                           capture_output=True, text=True, cwd=cwd, env=env)
    module, conf = where.stdout.split()
    assert module.startswith(site) and conf.startswith(site), where.stdout  # not the checkout
    cmift = [str(python), "-m", "cmift"]
    helped = subprocess.run([*cmift, "--help"], capture_output=True, text=True, cwd=cwd,
                            env=env, timeout=120)
    assert helped.returncode == 0 and "objective" in helped.stdout, helped.stderr[-2000:]
    ran = subprocess.run([*cmift, "task=mrpc", "model=tiny", "train.max_steps=3",
                          f"data.glue_dir={fake_glue}", f"output_dir={tmp_path}/out"],
                         capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert list((tmp_path / "out").rglob("metrics.json"))
    metric = subprocess.run([str(python), "-c", "import evaluate; from cmift.data.metrics import "
                             "GLUE_METRIC as g; print(evaluate.load(g, 'mrpc', keep_in_memory="
                             "True).compute(predictions=[1, 0], references=[1, 1]))"],
                            capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert "'f1': 0.666" in metric.stdout, metric.stderr[-2000:]

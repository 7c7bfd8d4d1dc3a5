"""Per-example gradients for guided dropout's Fisher: the vectorised torch.func path
(`dropout.guided.per_example=vmap`) against its peer, a loop of single-example backward passes
(`per_example=loop`, what the authors' script does), on the same examples in the same process.
Prints examples/s of each, the ratio, and the largest difference
between the two Fisher estimates (relative, per tensor).

  python bench/fisher_per_example.py --model minilm_l6 --task mrpc --samples 64
"""

from __future__ import annotations

import argparse
import time

from benchlib import add_glue_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm_l6")
    ap.add_argument("--task", default="mrpc")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    add_glue_dir(ap)
    args = ap.parse_args()

    import torch
    from hydra import compose, initialize_config_dir

    from cmift.cli import CONF_DIR  # registers the schema and resolvers
    from cmift.dropout import fisher
    from cmift.training.run import prepare_data

    torch.set_num_threads(args.threads)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [f"model={args.model}", f"task={args.task}", "dropout=guided",
                                 f"data.glue_dir={args.glue_dir}",
                                 f"dropout.guided.samples={args.samples}",
                                 f"dropout.guided.chunk={args.chunk}"])
    from cmift.data.tasks import TASKS

    task = TASKS[args.task]
    tokenizer, train, *_ = prepare_data(cfg, cfg.model, task)
    knobs = cfg.dropout.guided
    model = fisher._fisher_model("task", cfg.model, task, len(tokenizer), knobs.fisher_seed)
    prefix = model.base_model_prefix
    names = [n for n, _ in model.named_parameters() if n.startswith(f"{prefix}.")]
    from cmift.data.tokenized import PadCollator

    collate = PadCollator(train, tokenizer.pad_token_id, task.is_regression)
    chunks = [collate(list(range(s, min(s + args.chunk, args.samples))))
              for s in range(0, args.samples, args.chunk)]
    for c in chunks:
        c.pop("index")
    loss_fn = fisher.task_loss(task.is_regression)
    fisher.tensor_fisher(model, names, chunks[:1], loss_fn, "vmap")  # warm-up, both paths
    fisher.tensor_fisher(model, names, chunks[:1], loss_fn, "loop")

    start = time.perf_counter()
    vec, n = fisher.tensor_fisher(model, names, chunks, loss_fn, "vmap")
    vec_s = time.perf_counter() - start
    start = time.perf_counter()
    ref, _ = fisher.tensor_fisher(model, names, chunks, loss_fn, "loop")
    loop_s = time.perf_counter() - start
    # relative to the tensor, or to the largest Fisher for tensors whose true gradient is zero
    # (attention key biases: softmax ignores them; their "Fisher" is rounding noise ~1e-25)
    floor = 1e-6 * max(abs(v) for v in ref.values())
    worst = max(abs(vec[k] - ref[k]) / max(abs(ref[k]), floor) for k in names)
    print(f"model {args.model}, task {args.task}, {n} examples, chunk {args.chunk}, "
          f"{torch.get_num_threads()} threads")
    print(f"vectorised (torch.func.vmap): {n / vec_s:8.2f} ex/s")
    print(f"loop of single backward:      {n / loop_s:8.2f} ex/s")
    print(f"ratio vectorised / loop:      {loop_s / vec_s:8.2f}x")
    print(f"largest relative difference of a tensor's mean Fisher: {worst:.2e} (floor: 1e-6 of "
          "the largest)")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The CPU evidence queue, as two slots that run side by side (one torch thread each; two slots
# use this 2-core machine best). Every sweep resumes: finished runs are skipped, a run stopped
# part-way restarts from its last checkpoint. The sweeps run from a clean worktree of one commit
# (../study-<commit>), so edits in the working checkout never reach a running sweep; records go
# to this checkout's results/.
#   bash studies/queue.sh A [commit]   # default commit: HEAD
#   bash studies/queue.sh B [commit]
# Logs: /tmp/cmift-queue-<slot>.log. Stop: pkill -f "studies/queue.sh"; pkill -f "python -m cmift"
# How far each sweep has got (trains nothing): QUEUE_PLAN=1 bash studies/queue.sh A
set -uo pipefail
slot=${1:?slot A or B}
repo=${CMIFT_QUEUE_REPO:-$(cd "$(dirname "$0")/.." && pwd)}
commit=$(git -C "$repo" rev-parse --short "${2:-HEAD}")
tree="$repo/../study-$commit"
# both slots start together: one lock, so that two `worktree add`s never race (both fail)
[ -d "$tree" ] || flock "$repo/.git/cmift-queue.lock" sh -c \
  '[ -d "$1" ] || git -C "$2" worktree add -f --detach "$1" "$3" >/dev/null' _ "$tree" "$repo" "$commit"
[ -d "$tree" ] || { echo "queue $slot: no worktree $tree for $commit" >&2; exit 1; }
# bash reads a script as it runs it: run the worktree's copy, so that editing this file in the
# checkout never reaches a running queue (records still go to the checkout's results/)
# (a commit from before this line runs on from here: its copy would write to its own results/)
if [ -z "${CMIFT_QUEUE_REPO:-}" ] && grep -q CMIFT_QUEUE_REPO "$tree/studies/queue.sh"; then
  CMIFT_QUEUE_REPO=$repo exec bash "$tree/studies/queue.sh" "$slot" "$commit"
fi
export GLUE_DIR=${GLUE_DIR:-$repo/../shared/glue} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH=$tree
log=/tmp/cmift-queue-$slot.log
cpu=(train.precision=bf16 threads=1)   # bf16 autocast: about 2x on this CPU (avx512_bf16)
tuned=(train.lr=1e-4 train.epochs=5)   # ce_tuning's choice for MiniLM-L6 (MRPC, RTE, CoLA)
# studies not started before train.dropout_masks existed draw dropout masks with torch.rand:
# ~15% less time per step at one thread on this CPU, the same distribution (docs/DROPOUT.md);
# the studies already under way keep torch's bernoulli_ so that their runs stay one recipe
fast=(train.dropout_masks=uniform)
# tuning_methods' second learning rate, for the parameter-efficient methods only
peft_lr=(tuning=prefix,prompt,lt_prefix,lt_prompt train.lr=5e-3)

sweep() {  # sweep <study> <overrides...>
  local study=$1; shift
  if [ -n "${QUEUE_PLAN:-}" ]; then  # QUEUE_PLAN=1 bash studies/queue.sh A: progress, no training
    (cd "$tree" && python -m cmift -m "experiment=$study" "$@" "${cpu[@]}" plan=true \
       "output_dir=$repo/results/cpu/$study" 2>/dev/null) | grep "^cmift: plan: [0-9]* runs" |
      sed "s|^cmift: plan: |$slot: $study $* -> |"
    return 0
  fi
  echo "$(date +%T) slot $slot: $study $*" >> "$log"
  (cd "$tree" && python -m cmift -m "experiment=$study" "$@" "${cpu[@]}" \
     "output_dir=$repo/results/cpu/$study") >> "$log" 2>&1
}

comparison2() {  # comparison2 <task> <seeds> [overrides]: kd_student_tuning, then max_cmi_kd_vs_kd
  local task=$1 seeds=$2 subset=() grid=ce_tuning teacher recipe  # at its choice
  [ $task = sst2 ] && { subset=(data.max_train_samples=10000); grid=ce_tuning_sst2; }
  teacher=$(cd "$tree" && python studies/chosen_recipe.py "$repo/results/cpu/$grid" $task \
    --teacher) || { echo "$slot: no ce recipe for $task's teachers" >&2; return 0; }
  sweep kd_student_tuning task=$task "${fast[@]}" "${subset[@]}" $teacher
  recipe=$(cd "$tree" && python studies/chosen_recipe.py "$repo/results/cpu/kd_student_tuning" \
    $task) || { [ -n "${QUEUE_PLAN:-}" ] && echo "$slot: max_cmi_kd_vs_kd $task -> waits" \
    "for kd_student_tuning"; return 0; }
  sweep max_cmi_kd_vs_kd task=$task "${fast[@]}" "${subset[@]}" $teacher $recipe seed=$seeds \
    "${@:3}"
}

ttm_rows() {  # ttm_rows <task:seeds>...: TTM / WTTM students (arXiv 2402.11148's losses) as
  local run  # extra rows: the same tasks, seeds, teachers and student recipe as kd's
  for run in "$@"; do comparison2 ${run%%:*} ${run#*:} distillation=ttm,wttm; done
}

case $slot in
  A)  # #14 comparison 1, then its ablations at MRPC's chosen lam (0.1)
    sweep min_cmi_vs_ce task=mrpc "${tuned[@]}"
    sweep min_cmi_vs_ce task=rte "${tuned[@]}"
    sweep min_cmi_vs_ce task=cola "${tuned[@]}" seed=1,2,3
    sweep min_cmi_vs_ce task=wnli train.lr=2e-5 train.epochs=3 seed=1,2,3
    sweep min_cmi_vs_ce task=mrpc "${tuned[@]}" objective=min_cmi objective.cmi.lam=0.1 \
      objective.cmi.space=output
    sweep min_cmi_vs_ce task=mrpc "${tuned[@]}" objective=min_cmi objective.cmi.lam=0.1 \
      objective.cmi.centroid_mode=train
    # SST-2 on its first 10,000 training examples: tune ce's recipe, then compare at its choice
    # (read from the finished grid by the tables' rule; a partial grid chooses nothing)
    sweep ce_tuning_sst2 && recipe=$(cd "$tree" && python studies/chosen_recipe.py \
      "$repo/results/cpu/ce_tuning_sst2" sst2) &&
      sweep min_cmi_vs_ce task=sst2 data.max_train_samples=10000 $recipe seed=1,2,3
    # comparison 2's last sweeps from the other end (B runs them in order), so that #14 ends
    # before #18's long tuning_methods sweeps take both slots
    ttm_rows sst2:1,2,3 cola:1,2,3 rte:1,2,3,4,5 mrpc:4,5 wnli:1,2,3
    comparison2 rte 4,5; comparison2 mrpc 4,5
    # then B's last sweeps from the other end: a run one slot has claimed or finished, the
    # other skips (run-directory lock), so the two slots share the tail of the queue
    sweep mixtures "${fast[@]}"
    sweep tuning_methods task=sst2 "${fast[@]}" data.max_train_samples=8000
    sweep tuning_methods task=sst2 "${fast[@]}" data.max_train_samples=8000 "${peft_lr[@]}"
    # and B's tuning_methods sweeps from the other end, so that neither slot idles
    sweep tuning_methods task=cola "${fast[@]}" "${peft_lr[@]}"
    sweep tuning_methods task=cola "${fast[@]}"
    sweep tuning_methods task=rte "${fast[@]}" "${peft_lr[@]}"
    ;;
  B)  # #17's evidence, #14 comparison 2, then #18, #21
    sweep guided_dropout "${tuned[@]}"
    sweep guided_dropout task=mrpc "${tuned[@]}" objective=min_cmi objective.cmi.lam=0.1 \
      dropout=standard,guided
    # comparison 2: the kd student's own recipe first (the teachers keep ce_tuning's), then the
    # study at it; its first attempt at the teachers' recipe overfit (results/cpu/
    # max_cmi_kd_vs_kd_first_recipe, docs/results_reading.md)
    # MRPC and RTE first (seeds 1-3), then CoLA, SST-2's first 10,000 rows and WNLI (seeds 1-3),
    # then MRPC and RTE's seeds 4 and 5; each task's teachers at ce's chosen recipe for it
    for run in mrpc:1,2,3 rte:1,2,3 cola:1,2,3 sst2:1,2,3 wnli:1,2,3 mrpc:4,5 rte:4,5; do
      comparison2 ${run%%:*} ${run#*:}
    done
    ttm_rows mrpc:1,2,3 wnli:1,2,3 mrpc:4,5 rte:1,2,3,4,5 cola:1,2,3 sst2:1,2,3
    # each task: the preset (all five methods at the authors' lr 5e-5), then its second lr for
    # the four parameter-efficient methods (the preset's header says why)
    for task in rte cola sst2; do
      subset=(); [ $task = sst2 ] && subset=(data.max_train_samples=8000)  # its documented subset
      sweep tuning_methods task=$task "${fast[@]}" "${subset[@]}"
      sweep tuning_methods task=$task "${fast[@]}" "${subset[@]}" "${peft_lr[@]}"
    done
    sweep mixtures "${fast[@]}"
    ;;
  *) echo "slot A or B" >&2; exit 2 ;;
esac
[ -n "${QUEUE_PLAN:-}" ] || echo "$(date +%T) slot $slot: queue done" >> "$log"

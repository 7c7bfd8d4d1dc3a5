"""Multi-task training mixtures (`mixture=`): which task each training batch comes from.

`none` is single-task training (every run before the group). `uniform`, `size` and
`temperature` are the usual mixing rules (rules.py); `taskpgm` chooses the proportions by
minimising TaskPGM's energy over task affinities (arXiv 2507.12612; taskpgm.py). Every file
here is torch-free: it declares specs and knobs and computes a vector p on the simplex; the
multi-task training itself lives in cmift/training/multitask.py.
"""

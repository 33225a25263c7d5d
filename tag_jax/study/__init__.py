"""The grouping study: python -m tag_jax.study --config=configs/synthetic_study.py --workdir=runs/s.

Runs every method of `config.study.methods` as stages, each one
`train.train_and_evaluate(stage_config, workdir/<stage>)` of the config with a
few keys changed (`plan.build_plan`), then writes `report.md`, `report.json` and
`total_error_vs_compute.png`:
- 'mtl': all tasks in one network ('mtl'); 'single': every task alone ('groups').
  With 'hoa' in the study (equal search and training epochs, no overrides
  for either) 'single' is read from the HOA run instead: its single-task
  networks ARE these networks
  (same initialisation, data order and per-network early stopping; the HOA run
  serves every task from them), and the row gets their share 2 / (T + 1) of
  that run's compute.
- 'tag', 'cs', 'hoa': one grouping run ('tag', 'cs', 'pairs'; its groups.json
  has a selection for each k of config.study.max_groups), then for each k the
  chosen groups trained ('groups' on that groups.json) in `<method>_k<k>`.
- 'random': for each k, a random split into k groups ('random', seed
  config.groups.random_seed).
- 'uw', 'gradnorm', 'pcgrad': one run each; 'dmtg' for each k: a search with
  dmtg.num_groups = k (reported as 'dmtg one-shot') and its groups retrained.
`PLANNERS` maps each study method to the function that adds its stages and rows.
Grouping runs take config.study.epochs_search epochs, the others
config.study.epochs_train (0 = config.num_epochs). config.study.overrides.<method>
changes the config of that method's own runs (not of the groups it selected).

Seeds: with config.study.seeds = S > 1 every stage runs for each seed
(config.seed + i, in workdir/seed_<i>/<stage>: initialisation, data order and
the methods' own randomness differ). Each row then gives the mean, standard
deviation and 95% interval of its test Total Error over seeds, whether it
differs from all-in-one MTL by more than the seed noise (Welch's interval of
the difference), and how often each grouping was chosen. A row one of whose
runs did not learn (validation Total Error not clearly below the majority
baseline, results.json 'learned') is marked and not compared.

Resumable: a stage whose results.json exists is skipped, if it was made with the
settings this study gives it (else the study stops before any stage trains,
naming the stage and the key: tag_jax.study.resume); an interrupted one resumes
from its checkpoints. A stage's own results.json (written atomically, last) is
the only record that it is done, so a kill at any instant leaves a study that
the same command continues. The study folder is locked while the study runs
(tag_jax.workdir); --restart deletes the report and every stage's checkpoints
and outputs first (exactly what the study wrote: tag_jax.manifest). The report
reads each stage's results.json only: its test metrics, the groups that served
the tasks, and its compute (trunk passes counted by the loop, training seconds
summed over resumes).
"""

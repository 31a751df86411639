"""Schema v1 of the StabilityBench corpus, declared once.

Every table the project writes (``steps``, ``manifest``, ``events``, ``runs``) is an
Arrow schema built here. Each field carries metadata ``unit`` and ``description``;
writers pass these schemas at write time and :mod:`stabilitybench.data_schema.io` validates against
them, so the Parquet files are self-describing for readers that never import this
package (polars, DuckDB, pandas).

Conventions
-----------
* ``step`` is the optimizer-update index (0-based): one ``steps`` row per gradient
  step that the optimizer applied.
* Columns that a domain or algorithm does not produce are null, never zero.
* Values that an algorithm only reports once per training phase (SB3 PPO reports
  its losses, ``approx_kl`` and ``clip_fraction`` once per ``train()`` call) sit on
  the *last* update of that phase and are null on the others.
* Partition values (``domain``, ``algo``, ``env``, ``perturbation``) are stored as
  columns too, so a flat read without Hive partitioning still has them. In the steps
  files they are dictionary-encoded strings: the type pyarrow (and so pandas) infers for
  Hive partition values, so ``pd.read_parquet("corpus/steps")`` and
  ``pq.read_table("corpus/steps")`` see one type per column in the folder names and the files.
* A column name means one thing in every table: a column that two tables share is one
  :class:`Column` declared here once (``steps ⋈ runs`` and ``events ⋈ runs`` are natural joins).

Versions: 1.1 renamed two columns that meant two things (:data:`RENAMED`) and made the
steps files' partition columns dictionary-encoded; 1.2 added the nullable steps column
``grad_coherence_fixed`` (RL PPO's fixed-point minibatch coherence); 1.3 added the nullable steps columns
``adam_update_ratio_rms`` (Adam's update-ratio signal, every domain) and ``logit_logz`` (the LM's output
log-partition). :mod:`stabilitybench.data_schema.compat` reads 1.0, 1.1 and 1.2 files (a column newer than the
file reads as null).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa

SCHEMA_VERSION = "1.3"
#: The version a ``run_id`` hashes (``stabilitybench.generate.spec``). 1.1 renamed columns but changed no run,
#: so it stays "1.0" and corpora written with 1.0 keep their ids (and resume).
RUN_ID_VERSION = "1.0"
#: The version a :class:`~stabilitybench.generate.recorder.Recorder`'s run_id hashes. Recorded runs hashed the schema
#: version they were written with up to 1.2 (the ids ``tests/test_run_writer.py`` pins); 1.3 only added nullable
#: columns and changed no run, so it stays "1.2" and a run recorded again keeps its id (and is refused as a
#: duplicate). Bump it only with a change that makes a recorded run a different run.
RECORDER_RUN_ID_VERSION = "1.2"
#: Nullable columns each minor version added, per table: a file of an older version reads them as null.
ADDED_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "1.2": {"steps": ("grad_coherence_fixed",)},
    "1.3": {"steps": ("adam_update_ratio_rms", "logit_logz")},
}
#: Schema versions whose files the readers still open (through :mod:`stabilitybench.data_schema.compat`).
LEGACY_VERSIONS = ("1.0", "1.1", "1.2")

DOMAINS = ("rl", "lm")
DIMENSIONS = ("none", "optimization", "environmental", "parametric", "learning_signal")
RUN_STATUSES = ("ok", "failed", "running")
STOP_REASONS = ("completed", "nonfinite", "interrupted")
EVENT_KINDS = ("perturbation_on", "perturbation_off", "perturbation_applied", "nonfinite", "eval", "collapse",
               # a live monitor's alarm and the actions taken on it (stabilitybench.generate.intervention)
               "alarm", "checkpoint", "lr_backoff", "lr_backoff_end", "rollback", "stop",
               # an update refused by the skip-step arm's rule (stabilitybench.generate.skip_step)
               "skip_step")

#: Hive partition keys of ``steps/``, in directory order.
PARTITION_COLUMNS = ("domain", "algo", "env", "perturbation")


@dataclass(frozen=True)
class Column:
    """One declared column: Arrow type, unit and a one-line description."""

    name: str
    type: pa.DataType
    unit: str
    description: str
    nullable: bool = True

    def field(self) -> pa.Field:
        meta = {b"unit": self.unit.encode(), b"description": self.description.encode()}
        return pa.field(self.name, self.type, nullable=self.nullable, metadata=meta)


def _schema(name: str, columns: list[Column]) -> pa.Schema:
    names = [c.name for c in columns]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:  # a programming error in this module, caught at import
        raise ValueError(f"duplicate columns in {name} schema: {sorted(dupes)}")
    meta = {b"stabilitybench.table": name.encode(), b"stabilitybench.schema_version": SCHEMA_VERSION.encode()}
    return pa.schema([c.field() for c in columns], metadata=meta)


STR, I64, F64, BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
#: Type of the partition columns inside the steps files (what Hive discovery infers for them).
DICT_STR = pa.dictionary(pa.int32(), pa.string())

# ------------------------------------------------------- shared by several tables (declared once)
RUN_ID = Column("run_id", STR, "-", "Stable hash of the run spec (see RUN_ID_VERSION); the join key", nullable=False)
STEP = Column("step", I64, "update", "Optimizer-update index, 0-based", nullable=False)
SAMPLES_SEEN = Column("samples_seen", I64, "samples", "Env steps (RL) or tokens (LM) consumed before this update")
ELAPSED = Column("wall_time_s", F64, "s", "Seconds since the run started, when this row was recorded")
DOMAIN = Column("domain", STR, "-", "rl | lm (in steps/ also a Hive partition key)", nullable=False)
ALGO = Column("algo", STR, "-", "Algorithm or model family, e.g. ppo, gpt2 (in steps/ also a Hive partition key)",
              nullable=False)
ENV = Column("env", STR, "-", "Gymnasium env id or text corpus name (in steps/ also a Hive partition key)",
             nullable=False)
PERTURBATION = Column("perturbation", STR, "-", "Perturbation kind, e.g. none, lr_spike (in steps/ also a Hive "
                      "partition key)", nullable=False)

# --------------------------------------------------------------------------- steps
STEPS_CORE = [
    RUN_ID,
    STEP,
    replace(SAMPLES_SEEN, nullable=False),
    replace(ELAPSED, nullable=False),
    Column("lr", F64, "-", "Learning rate the optimizer applied at this update (after any perturbation)"),
    Column("loss", F64, "-", "Total training loss (RL PPO: last minibatch of the train() call; see module doc)"),
    Column("grad_norm", F64, "L2", "Global L2 norm of the gradient before clipping (SAC/TD3: the critic's)"),
    Column(
        "grad_coherence",
        F64,
        "cosine",
        "Mean pairwise cosine of K gradients. Estimator by domain: RL (PPO/SAC/TD3) 'rolling', across K updates: "
        "the applied (post-clipping) gradients of the last K updates (K = manifest coherence_window), null until K "
        "gradients exist, SAC/TD3: the critic's. LM 'fixed-point', across microbatches at fixed parameters: the K "
        "microbatch gradients accumulated into this update (K = grad_accum)",
    ),
    Column(
        "grad_coherence_fixed",
        F64,
        "cosine",
        "RL PPO 'fixed-point' estimator (the paper's): mean pairwise cosine of K minibatch gradients of PPO's loss "
        "taken at the *same* parameters, without stepping (K = coherence_window minibatches drawn from the current "
        "rollout by the probe's own RNG); every probe_every updates (the dormant/erank probe rows), null otherwise "
        "and for SAC/TD3/LM (LM's grad_coherence is already fixed-point)",
    ),
    Column("update_norm", F64, "L2", "L2 norm of the parameter change made by this update (SAC/TD3: critic)"),
    Column("param_norm", F64, "L2", "Global L2 norm of the parameters after this update (SAC/TD3: critic)"),
    Column(
        "adam_update_ratio_rms",
        F64,
        "ratio",
        "Adam/AdamW only (null for other optimizers): sqrt of the mean over all parameter elements of "
        "g^2 / max(v_hat, eps^2), g the gradient the optimizer applied at this update (after clipping), v_hat "
        "Adam's bias-corrected second-moment estimate after taking in g (exp_avg_sq / (1 - beta2^t)), eps and "
        "beta2 the param group's: the RMS update ratio of Wortsman et al. 2023 (arXiv 2304.13013, StableAdamW's "
        "RMS_t), 1 at the first update; above 1 the second moment under-estimates the current gradient (a "
        "reported precursor of loss spikes). SAC/TD3: the critic's optimizer (schema 1.3)",
    ),
    Column("perturbation_active", BOOL, "-", "Whether the run's perturbation acted at this update", nullable=False),
    Column(
        "performance",
        F64,
        "task",
        "Higher is better. RL: mean return of the last perf_window completed episodes; LM: -val_loss",
    ),
]

STEPS_RL = [
    Column("episode_return", F64, "return", "Return of the most recently completed training episode (Monitor)"),
    Column("eval_return", F64, "return", "Mean return of the deterministic policy on the eval env"),
    Column("policy_loss", F64, "-", "Policy loss (PPO: mean policy-gradient loss of the train() call)"),
    Column("value_loss", F64, "-", "Value loss (PPO) or critic loss (SAC/TD3)"),
    Column("entropy", F64, "nats", "Policy entropy (PPO: minus SB3's entropy_loss, mean of the train() call)"),
    Column("approx_kl", F64, "nats", "Approximate KL(old || new) of the train() call (PPO)"),
    Column("clip_fraction", F64, "fraction", "Fraction of samples whose ratio was clipped in the train() call (PPO)"),
    Column("q_mean", F64, "return", "Mean current Q estimate (over critics) on the replay minibatch (SAC/TD3)"),
    Column("actor_grad_norm", F64, "L2", "SAC/TD3: global L2 norm of the actor's gradient at this gradient step "
           "(TD3: null on steps without a delayed actor update)"),
    Column("actor_grad_coherence", F64, "cosine", "SAC/TD3: rolling coherence (last K actor updates) of the actor's "
           "gradients"),
    Column("actor_update_norm", F64, "L2", "SAC/TD3: L2 norm of the actor's parameter change at this gradient step"),
    Column("alpha", F64, "-", "SAC: entropy temperature alpha, SB3's train/ent_coef (mean over the train() call); "
           "not the manifest's ent_coef setting"),
    Column("dormant_fraction", F64, "fraction", "Fraction of tau-dormant hidden units (ReDo; tau in config_json) of "
           "the policy's hidden layers on a fixed probe batch; every probe_every updates, null between"),
    Column("effective_rank", F64, "-", "Effective rank (Roy & Vetterli) of the policy's last hidden layer on the "
           "fixed probe batch; every probe_every updates, null between"),
]

STEPS_LM = [
    Column("train_loss", F64, "nats/token", "Mean training cross-entropy of this optimizer step"),
    Column("val_loss", F64, "nats/token", "Cross-entropy on the fixed validation set"),
    Column("attn_logit_max", F64, "logit", "Max pre-softmax attention logit (sampled)"),
    Column("output_logit_max", F64, "logit", "Max output logit (sampled)"),
    Column("logit_logz", F64, "nats", "Log-partition of the output logits, log sum_v exp(logit_v), averaged over "
           "the positions of the sampled microbatch (the same rows and batch as output_logit_max; null between); "
           "its growth is the output-logit divergence of arXiv 2309.14322 (schema 1.3)"),
    Column("tokens_per_s", F64, "tokens/s", "Training throughput of this step"),
]

STEPS_PARTITION = [replace(c, type=DICT_STR) for c in (DOMAIN, ALGO, ENV, PERTURBATION)]

STEPS_COLUMNS = STEPS_CORE + STEPS_RL + STEPS_LM + STEPS_PARTITION
STEPS_SCHEMA = _schema("steps", STEPS_COLUMNS)

# ------------------------------------------------------------------------ manifest
MANIFEST_COLUMNS = [
    RUN_ID,
    DOMAIN,
    ALGO,
    ENV,
    Column("seed", I64, "-", "Seed of everything random in the run", nullable=False),
    PERTURBATION,
    Column("dimension", STR, "-", "none | optimization | environmental | parametric | learning_signal", nullable=False),
    Column("magnitude", F64, "-", "Perturbation magnitude (kind-specific; 1 = identity for multiplicative kinds)"),
    Column("onset_frac", F64, "fraction", "Onset as a fraction of the run's optimizer updates"),
    Column("onset_step", I64, "update", "Onset as an optimizer-update index"),
    Column("duration_steps", I64, "update", "How many optimizer updates the perturbation lasts"),
    Column("stochasticity", STR, "-", "Named stochasticity level (low | default | high)", nullable=False),
    Column("batch_size", I64, "samples", "Minibatch size (stochasticity knob)"),
    Column("n_envs", I64, "-", "Parallel envs (stochasticity knob, RL)"),
    Column("ent_coef", F64, "-", "PPO entropy-coefficient setting (stochasticity knob); SAC's learned alpha is the "
           "steps column alpha"),
    Column("target_entropy_scale", F64, "-", "SAC target entropy = -scale x dim(A) (stochasticity knob)"),
    Column("action_noise_std", F64, "action", "TD3 Gaussian exploration noise std (stochasticity knob)"),
    Column("target_policy_noise", F64, "action", "TD3 target-policy smoothing noise std (stochasticity knob)"),
    Column("dropout", F64, "probability", "LM residual/embedding/attention dropout (stochasticity knob)"),
    Column("coherence_window", I64, "update", "K of the gradient-coherence window (LM: microbatches per update)"),
    Column("total_steps", I64, "samples", "Planned env steps (RL) or tokens (LM)", nullable=False),
    Column("planned_updates", I64, "update", "Planned optimizer updates"),
    Column("n_updates", I64, "update", "Optimizer updates actually recorded"),
    Column("stop_reason", STR, "-", "completed | nonfinite | interrupted (null if failed)"),
    Column("status", STR, "-", "ok | failed | running", nullable=False),
    Column("error", STR, "-", "One-line error of a failed run"),
    Column("run_wall_time_s", F64, "s", "Wall time of the whole run (steps/events wall_time_s: seconds since start)"),
    Column("started_at", STR, "ISO-8601", "UTC start time of the run"),
    Column("code_version", STR, "-", "Git commit (+dirty) or package version that produced the run", nullable=False),
    Column("schema_version", STR, "-", "Corpus schema version", nullable=False),
    Column("tokenizer_hash", STR, "-", "SHA-256 of the tokenizer (LM only)"),
    Column("steps_bytes", I64, "bytes", "Size of the run's steps file when it was written (null: not recorded)"),
    Column("steps_blake2b", STR, "hex", "BLAKE2b-128 hash of the steps file's bytes when it was written"),
    Column("events_bytes", I64, "bytes", "Size of the run's events file when it was written (null: not recorded)"),
    Column("events_blake2b", STR, "hex", "BLAKE2b-128 hash of the events file's bytes when it was written"),
    Column("config_json", STR, "json", "Full resolved run configuration, JSON", nullable=False),
]
MANIFEST_SCHEMA = _schema("manifest", MANIFEST_COLUMNS)

OUTCOME_COLUMNS = [
    Column("collapsed", BOOL, "-", "Whether the collapse rule fired (performance below the control line until at "
           "least W updates after the perturbation window ends, or non-finite telemetry)"),
    Column("collapse_kind", STR, "-", "nonfinite | performance | none (stabilitybench.analysis.collapse)"),
    Column("collapse_step", I64, "update", "Lag-free offline date of the collapse: on the per-episode returns where "
           "recorded (else eval_return, else performance), at most one observation interval early; the non-finite "
           "update for nonfinite collapses; null when censored"),
    Column("collapse_step_smoothed", I64, "update", "Date on the centred smoother of performance (collapse_step "
           "before lag-free dating; lags an instant RL break by about 5 episodes); null when censored"),
    Column("collapse_date_source", STR, "-", "What collapse_step was dated on: episode_return | eval_return | "
           "performance | nonfinite; null when censored"),
    Column("collapse_confirmed_step", I64, "update", "Update at which the collapse became confirmed online (the "
           "causal curve had stayed below the line for the whole confirmation window); null when censored"),
    Column("collapse_time", I64, "update", "Updates from perturbation onset to the offline collapse date; null when "
           "censored (see survival_time)"),
    Column("survival_time", I64, "update", "Survival duration from perturbation onset: to the offline collapse date, "
           "or to the last update when censored (pair with censored for survival models)"),
    Column("censored", BOOL, "-", "True if the run never collapsed (right-censored at its last step)"),
    Column("transient", BOOL, "-", "Performance fell below the collapse line after onset for at least the minimum "
           "confirmation length but recovered (not a collapse)"),
    Column("final_performance", F64, "task", "Performance at the end of the run"),
]
RUNS_SCHEMA = _schema("runs", MANIFEST_COLUMNS + OUTCOME_COLUMNS)

# -------------------------------------------------------------------------- events
EVENTS_COLUMNS = [
    RUN_ID,
    STEP,
    SAMPLES_SEEN,
    ELAPSED,
    Column("event", STR, "-", "perturbation_on | perturbation_off | perturbation_applied | nonfinite | eval | "
           "collapse; live monitoring: alarm | checkpoint | lr_backoff | lr_backoff_end | rollback | stop | "
           "skip_step",
           nullable=False),
    Column("detail", STR, "-", "Free text, e.g. which tensor was non-finite"),
    Column("value", F64, "-", "Event value, e.g. the perturbation magnitude"),
]
EVENTS_SCHEMA = _schema("events", EVENTS_COLUMNS)

#: Columns renamed since a legacy version, per table: old name -> new name (1.0 -> 1.1). Each old name
#: meant something else in another table: steps ``ent_coef`` (SAC's alpha) vs the manifest's PPO
#: setting, and the manifest's ``wall_time_s`` (run duration) vs steps/events (seconds since start).
RENAMED: dict[str, dict[str, str]] = {
    "steps": {"ent_coef": "alpha"},
    "manifest": {"wall_time_s": "run_wall_time_s"},
    "runs": {"wall_time_s": "run_wall_time_s"},
    "events": {},
}

SCHEMAS: dict[str, pa.Schema] = {
    "steps": STEPS_SCHEMA,
    "manifest": MANIFEST_SCHEMA,
    "runs": RUNS_SCHEMA,
    "events": EVENTS_SCHEMA,
}


def describe(table: str) -> list[dict[str, str]]:
    """Rows ``{name, type, unit, description, nullable}`` for docs and dataset cards."""
    schema = SCHEMAS[table]
    return [
        {
            "name": f.name,
            "type": str(f.type),
            "unit": f.metadata[b"unit"].decode(),
            "description": f.metadata[b"description"].decode(),
            "nullable": str(f.nullable).lower(),
        }
        for f in schema
    ]

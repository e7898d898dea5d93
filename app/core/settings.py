"""One settings object for every process, read from TUNEFORGE_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """All knobs and limits; invalid values fail at start-up, not at first use."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="ignore", validate_default=True)

    data_dir: Path = Field(default=Path("./data"), description="Root of the embedded database, blobs and models.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default is SQLite under data_dir. Postgres: postgresql+psycopg://...",
    )
    database_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Longest wait to connect to the database; past it a request answers 503 with Retry-After.",
    )
    database_retry_after_s: int = Field(
        default=5, ge=1, le=120, description="`Retry-After` of the 503 a request gets while the database is down."
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL; default is a serverless filesystem transport under data_dir.",
    )
    storage_dir: Path | None = Field(default=None, description="Blob storage root; default data_dir/blobs.")
    host: str = Field(default="127.0.0.1", description="Interface `tuneforge serve` listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `tuneforge serve` listens on.")
    organization_id: str = Field(default="org-tuneforge", min_length=1, description="`organization_id` on jobs.")

    # Upload and dataset-check limits.
    max_upload_bytes: int = Field(default=512 * MiB, ge=1, description="Largest accepted file upload.")
    upload_drain_bytes: int = Field(
        default=64 * MiB,
        ge=0,
        description="After the cap, read and discard this much before dropping the connection.",
    )
    max_line_bytes: int = Field(default=MiB, ge=64, description="Longest accepted JSONL line.")
    max_report_errors: int = Field(default=100, ge=1, le=10_000, description="Errors listed in a dataset report.")
    min_examples: int = Field(default=10, ge=1, description="Fewest examples a training file may have.")
    max_json_body_bytes: int = Field(
        default=4 * MiB,
        ge=1024,
        description="Largest request body other than a file upload, whatever its content-type.",
    )
    max_json_depth: int = Field(
        default=64, ge=2, le=512, description="Deepest nesting of arrays and objects in a JSON request body."
    )
    max_part_header_bytes: int = Field(
        default=16 * 1024, ge=256, le=MiB, description="Largest header block of one part of a multipart upload."
    )
    max_form_parts: int = Field(
        default=16, ge=2, le=1000, description="Most parts (the file plus text fields) a multipart upload may have."
    )
    max_form_field_bytes: int = Field(default=64 * 1024, ge=64, description="Longest text field of a multipart upload.")
    max_form_fields_total_bytes: int = Field(
        default=256 * 1024, ge=64, description="All text fields of a multipart upload together."
    )
    body_idle_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest pause between two chunks of a request body; past it the request answers 408 "
        "and a partial upload is removed.",
    )
    body_read_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Longest time to receive a whole request body other than a file upload; past it 408.",
    )
    list_limit_max: int = Field(default=10_000, ge=1, description="Largest `limit` a list request may ask for.")

    # Base models the operator offers: comma-separated names; `name=/local/dir` maps a name to a local copy.
    base_models: str = Field(
        default="tiny-chat",
        min_length=1,
        description="Base models offered: `name` or `name=/local/dir`, comma-separated.",
    )
    base_model_hub_ids: str = Field(
        default="",
        description="Hub ids of offered base models, `name=org/id` pairs, comma-separated: what artifacts "
        "(adapter_config.json, manifest.json) name the base by, so they load anywhere; default the offered name.",
    )

    # --- uploaded adapters (POST /v1/models) ---
    max_adapter_archive_bytes: int = Field(
        default=512 * MiB,
        ge=1,
        description="Largest adapter archive an upload may send (also capped by the upload cap).",
    )
    max_adapter_unpacked_bytes: int = Field(
        default=2048 * MiB, ge=1, description="Largest total size of the files inside an adapter archive."
    )
    max_adapter_archive_members: int = Field(
        default=64, ge=2, le=100_000, description="Most entries (files and folders) an adapter archive may hold."
    )
    max_adapter_rank: int = Field(default=256, ge=1, le=1024, description="Highest LoRA rank an upload may have.")
    adapter_target_modules: str = Field(
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        min_length=1,
        description="Module names an uploaded LoRA adapter may target, comma-separated.",
    )

    # --- model download (GET /v1/models/{model}/content), built by `python -m engine export` ---
    export_merge_max_memory_mb: int = Field(
        default=16384,
        ge=64,
        description="Most memory a LoRA merge may need (base and adapter in fp32 plus the runtime); a bigger "
        "merge is refused before it starts (format=adapter still downloads).",
    )
    export_max_concurrent_merges: int = Field(
        default=1, ge=1, le=64, description="LoRA merges run at once; another one answers 503 with Retry-After."
    )
    export_retry_after_s: int = Field(
        default=30, ge=1, le=3600, description="`Retry-After` of the 503 a download gets while merges are busy."
    )
    export_timeout_s: float = Field(
        default=3600.0, gt=0, description="Longest time one export (merge or copy) may take; past it 503."
    )
    export_chunk_bytes: int = Field(
        default=MiB, ge=4096, le=64 * MiB, description="Size of the pieces a download streams (memory per download)."
    )

    # --- jobs and workers (section owned by the jobs/worker code) ---
    lease_seconds: float = Field(default=120.0, gt=0, description="A running job's lease; renewed by heartbeats.")
    heartbeat_seconds: float = Field(default=15.0, gt=0, description="How often a running task renews its lease.")
    control_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        description="How often a running task reads its job's cancel/pause flags between heartbeats (a cheap read).",
    )
    reaper_seconds: float = Field(default=30.0, gt=0, description="How often the reaper sweeps expired leases.")
    doorbell_resend_seconds: float = Field(
        default=60.0, gt=0, description="Re-send the queue message of a job left queued this long."
    )
    max_attempts: int = Field(default=3, ge=1, le=100, description="Runs of one job before it fails for good.")
    worker_concurrency: int = Field(default=1, ge=1, le=64, description="Jobs one worker runs at once.")
    embedded_worker: bool = Field(default=True, description="`tuneforge serve` starts a worker child process.")
    engine_command: str = Field(default="", description="Command that runs the engine; default `<python> -m engine`.")

    # --- evaluation of every job (base vs tuned), passed to the engine in the run's spec ---
    eval_enabled: bool = Field(default=True, description="Measure the base and the tuned model on every job.")
    eval_valid_examples: int = Field(
        default=256, ge=1, description="Validation examples scored at each evaluation (full_valid_loss uses all)."
    )
    eval_generation_examples: int = Field(
        default=16, ge=0, le=1024, description="Validation examples answered greedily, base vs tuned (0: none)."
    )
    eval_generation_max_tokens: int = Field(
        default=64, ge=1, le=4096, description="Longest generated answer in the generation check."
    )
    eval_generation_max_seconds: float = Field(
        default=60.0, gt=0, description="Time cap of one generation pass; unanswered examples are left out."
    )
    eval_probe_tokens: int = Field(
        default=4096, ge=0, description="Tokens of the shipped general-text probe scored for forgetting (0: off)."
    )
    eval_probe_per_skill: int = Field(
        default=16, ge=0, le=1000, description="Multiple-choice probes per tiny-chat skill (0: off)."
    )
    forgetting_loss_increase: float = Field(
        default=0.25, ge=0, description="Rise in general-text loss (nats/token) that raises a `forgetting` warning."
    )
    forgetting_skill_drop: float = Field(
        default=0.15, ge=0, le=1, description="Fall in skill-probe accuracy that raises a `forgetting` warning."
    )
    overfitting_patience: int = Field(
        default=2, ge=1, le=100, description="Evaluations of rising validation loss that raise `overfitting`."
    )

    # --- dataset doctor: token-level checks for the report endpoint and at job validation ---
    doctor_enabled: bool = Field(default=True, description="Run the dataset doctor when a job validates its files.")
    doctor_max_examples: int = Field(
        default=50_000, ge=1, description="Examples the doctor tokenizes per file; beyond it the report is partial."
    )
    doctor_max_seconds: float = Field(default=30.0, gt=0, description="Time cap of the doctor's pass over one file.")
    doctor_max_listed_lines: int = Field(default=50, ge=1, le=10_000, description="Line numbers listed per finding.")
    doctor_near_duplicate_threshold: float = Field(
        default=0.85, gt=0, le=1, description="MinHash Jaccard similarity from which two examples are near-duplicates."
    )
    doctor_near_duplicate_max_examples: int = Field(
        default=20_000, ge=0, description="Examples indexed for near-duplicate detection (0: off)."
    )
    doctor_label_max_classes: int = Field(
        default=20, ge=2, le=1000, description="Most distinct answers for data to count as classification-style."
    )
    doctor_label_skew_ratio: float = Field(
        default=5.0, gt=1, description="Most/least frequent label ratio that raises a `label_skew` warning."
    )
    doctor_identical_answer_share: float = Field(
        default=0.3, gt=0, le=1, description="Share of examples with a repeated answer that raises a warning."
    )

    # --- inference (section owned by the serving code) ---
    inference_urls: str = Field(
        default="",
        description="Cluster mode: `base=http://host:port` pairs, comma-separated; each URL is a TuneForge inference "
        "process or a vLLM OpenAI server with LoRA enabled. Empty: embedded inference inside `tuneforge serve`.",
    )
    inference_api_key: str | None = Field(default=None, description="Bearer token the API sends to inference backends.")
    inference_timeout_s: float = Field(default=600.0, gt=0, description="Longest wait for an inference backend.")
    max_concurrent_requests_per_key: int = Field(default=8, ge=1, description="Concurrent inference calls per API key.")
    max_prompt_tokens: int = Field(default=2048, ge=1, description="Longest prompt an inference request may send.")
    max_output_tokens: int = Field(default=512, ge=1, description="Most tokens one completion may generate.")
    max_loaded_adapters: int = Field(default=8, ge=1, description="Adapters kept in memory per base model (LRU).")
    max_loaded_full_models: int = Field(
        default=2, ge=1, description="Full fine-tunes kept in memory per base model (LRU; idle ones are evicted)."
    )
    max_full_models_memory_mib: int = Field(
        default=8192,
        ge=1,
        description="MiB of weights the resident full fine-tunes of one base model may take together (the base not "
        "counted); a full model larger than this answers 503.",
    )
    max_batch_size: int = Field(default=64, ge=1, description="Sequences decoded together per base model.")
    embedded_inference: bool = Field(default=True, description="`tuneforge serve` runs inference in-process.")
    graceful_shutdown_s: float = Field(
        default=10.0,
        ge=0,
        le=600,
        description="On SIGTERM, how long open requests may take to finish before they are cancelled "
        "(generation is stopped at once either way).",
    )

    # --- what operators and users see: the job log, the access log ---
    job_log_progress_seconds: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="Least time between two progress lines of one running job in the server and worker log.",
    )
    log_polling_requests: bool = Field(
        default=False,
        description="Log an access line for every successful GET/HEAD (polling); errors and writes always are.",
    )

    @field_validator("database_url", "broker_url")
    @classmethod
    def _blank_is_default(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("database_url must be a sqlite:// or postgresql+psycopg:// URL")
        return value

    @model_validator(mode="after")
    def _absolute_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.storage_dir is not None:
            self.storage_dir = self.storage_dir.expanduser().resolve()
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tuneforge.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_storage_dir(self) -> Path:
        return self.storage_dir or self.data_dir / "blobs"

    @property
    def base_model_map(self) -> dict[str, str]:
        """Offered base model name -> where the engine loads it from (a name, hub id or local dir)."""
        mapping: dict[str, str] = {}
        for item in self.base_models.split(","):
            name, _, source = item.strip().partition("=")
            if name:
                mapping[name.strip()] = source.strip() or name.strip()
        return mapping

    def public_base_model_name(self, name: str) -> str:
        """What artifacts call an offered base model: its configured hub id, else the offered name."""
        for item in self.base_model_hub_ids.split(","):
            key, sep, hub_id = item.strip().partition("=")
            if sep and key.strip() == name and hub_id.strip():
                return hub_id.strip()
        return name

    @property
    def inference_url_map(self) -> dict[str, str]:
        mapping: dict[str, str] = {}
        for item in self.inference_urls.split(","):
            name, sep, url = item.strip().partition("=")
            if sep and name.strip() and url.strip():
                mapping[name.strip()] = url.strip().rstrip("/")
        return mapping

    @property
    def queue_dir(self) -> Path:
        """Folder of the serverless filesystem broker (embedded default)."""
        return self.data_dir / "queue"

    @property
    def is_embedded_queue(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

"""Worker settings in code, for those who prefer it to CML_JOBS_* variables.

cd examples && arq worker_settings.WorkerSettings
"""

from datetime import timedelta

from quickstart import Container

from cml_jobs import Settings, worker_settings

WorkerSettings = worker_settings(
    Settings(
        redis_url="redis://localhost:6379/0",
        modules=("quickstart",),
        container=Container(),
        max_jobs=20,  # runs at once in this worker
        lease=timedelta(seconds=6),  # a lost worker's run is re-run after this
        drain_timeout=timedelta(seconds=25),  # on SIGTERM; below the platform's grace period
    )
)

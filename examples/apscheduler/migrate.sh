# See what would be scheduled: nothing is written (--dry-run is the default).
cml-jobs migrate apscheduler \
    --redis-url redis://localhost:6379/0 \
    --jobs-key apscheduler.jobs --run-times-key apscheduler.run_times \
    --map myapp.tasks:send_digest=DigestJob \
    --map myapp.tasks:clean_folder=CleanupJob \
    --map myapp.tasks:remind=ReminderJob \
    --modules myapp.jobs

# Schedule them into the store your workers use (stop APScheduler first).
export CML_JOBS_REDIS_URL=redis://localhost:6379/1 CML_JOBS_MODULES=myapp.jobs
cml-jobs migrate apscheduler --redis-url redis://localhost:6379/0 \
    --map myapp.tasks:send_digest=DigestJob --map myapp.tasks:clean_folder=CleanupJob \
    --map myapp.tasks:remind=ReminderJob --apply

# From an SQLAlchemyJobStore instead:
cml-jobs migrate apscheduler \
    --sqlalchemy-url postgresql+psycopg://app@db/app --tablename apscheduler_jobs \
    --map myapp.tasks:send_digest=DigestJob --dry-run

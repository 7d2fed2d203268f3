# Where the workers' Redis is: the same variables the workers read (options override them).
export CML_JOBS_REDIS_URL=redis://localhost:6379/0 CML_JOBS_KEY_PREFIX=cml:

cml-jobs tasks                                   # every task, soonest next run first
cml-jobs tasks --state paused --state parked     # what needs a look
cml-jobs tasks --job SyncInvoicesJob --json | jq '.[].id'
cml-jobs show invoices-acme                      # descriptor, next 5 occurrences, history
cml-jobs pause invoices-acme --note "ACME's API is down, ticket OPS-42"
cml-jobs trigger invoices-acme                   # one extra run, now
cml-jobs resume invoices-acme
cml-jobs backfill invoices-acme --start 2026-01-01T00:00 --end 2026-01-02T00:00
cml-jobs workers                                 # the live workers and their heartbeats
cml-jobs events --follow --json > events.jsonl   # the live stream; resume with --from ID
cml-jobs check || alert "cml-jobs is unhealthy"  # exit 1: Redis away, no worker, overdue

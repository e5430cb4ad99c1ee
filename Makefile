# kunpay: `make demo` runs a payment end to end; `make test` runs lint and the whole suite;
# `make bench` runs the end-to-end benchmark (benchmarks/e2e.py); `make faults` the fault suite
# at a large scale, with a table (tests/fault).
.PHONY: demo test lint stop venv services bench faults

demo:
	scripts/dev.sh demo

test:
	scripts/dev.sh test

lint:
	scripts/dev.sh lint

# make bench BENCH_ARGS="--payments 5000 --db postgres --workers 2"
bench:
	scripts/dev.sh bench $(BENCH_ARGS)

# make faults FAULT_ARGS="--only worker_kills --seed 3"
faults:
	scripts/dev.sh faults $(FAULT_ARGS)

stop:
	scripts/dev.sh stop

venv:
	scripts/dev.sh venv

services:
	scripts/dev.sh rabbitmq
	scripts/dev.sh postgres

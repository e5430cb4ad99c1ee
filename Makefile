# kunpay: `make demo` runs a payment end to end; `make test` runs lint and the whole suite.
.PHONY: demo test lint stop venv services

demo:
	scripts/dev.sh demo

test:
	scripts/dev.sh test

lint:
	scripts/dev.sh lint

stop:
	scripts/dev.sh stop

venv:
	scripts/dev.sh venv

services:
	scripts/dev.sh rabbitmq
	scripts/dev.sh postgres

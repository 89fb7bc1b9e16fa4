# Developer shortcuts; each target is a thin wrapper over a hack/ script or `stratus dev`.
.PHONY: demo test deps kube crds lint unit down

demo:            ## the main job: local cloud up, examples applied and shown
	./hack/demo

test:            ## everything CI runs
	./hack/test

deps:            ## Debian packages and .venv
	./hack/install-deps

kube:            ## build (or reuse) etcd, kube-apiserver, kube-controller-manager, kubectl, helm
	./hack/kube/build.sh

crds: deps       ## regenerate crds/ from stratus_api
	.venv/bin/stratus dev gen-crds

lint: deps       ## ruff, mypy and the import contracts
	.venv/bin/ruff check operator agents tests
	.venv/bin/ruff format --check operator agents tests
	.venv/bin/mypy
	.venv/bin/lint-imports

unit: deps       ## the tests that need no cluster
	.venv/bin/pytest tests/unit

down:            ## stop the local cloud
	.venv/bin/stratus dev down

# The two commands of the README. Each sets up everything it needs on a fresh machine.
#   make quickstart   run the quickstart job (local Ray, local output, built-in tiny model) and verify it
#   make test         run the test suite (what CI runs)
#   make image        build the container image (infra/docker/Dockerfile; needs docker and a registry)

VENV ?= .venv
PYTHON ?= python3
# torch + torchvision that import together (lpips needs torchvision; the 2.13.0 CPU wheel has no
# matching torchvision here). On a GPU machine set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
IMAGE ?= latentmill:0.1.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip would compile all 22,000 installed modules to bytecode (80 s of CPU here), and a run imports
# about 5,000 of them. So each module is compiled when it is first imported and cached in the venv,
# as Python does by default; make's commands keep that cache even where the environment sets
# PYTHONDONTWRITEBYTECODE (without it, every process of a job would compile torch again on import).
PIP_INSTALL := $(BIN)/python -m pip install --quiet --no-compile
unexport PYTHONDONTWRITEBYTECODE

.PHONY: quickstart test setup image clean decoder-repro

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) $(TORCH_SPEC)
	$(PIP_INSTALL) -e '.[test]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/latentmill run jobs/examples/quickstart.yaml
	$(BIN)/latentmill verify ./latentmill-output/quickstart

# docs/decoder-training.md's reproduction (issue 27): teacher, encodes, distilled decoders, eval; ~1 h on 2 cores.
decoder-repro: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash jobs/examples/decoder-repro.sh

test: $(STAMP)
	# The browser page's tests drive Debian's Chromium (as root, as CI is); never Playwright's own download.
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

image:
	docker build -f infra/docker/Dockerfile --build-arg TORCH_SPEC="$(TORCH_SPEC)" -t $(IMAGE) .

clean:
	rm -rf $(VENV) latentmill-output

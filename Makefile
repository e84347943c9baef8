# make demo : set up .venv, train the tiny GFT LlamaGen on the embedded data, sample at beta = 0.5
# make test : set up .venv, run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test tokenizer clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[test,plots]'
	# the Inception parity test's reference; --no-deps: its torchvision does not import beside this torch
	$(PY) -m pip install -q --no-deps torch-fidelity==0.4.0
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/deepspeed scripts/train_llamagen.py
	$(PY) scripts/generate.py --beta 0.5

test: setup
	$(PY) -m pytest -q

tokenizer: setup
	$(PY) scripts/train_tokenizer.py --config configs/tokenizer/shapes-vq.yaml

clean:
	rm -rf $(VENV) runs samples

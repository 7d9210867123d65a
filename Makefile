# The README's two Quickstart commands: `make demo` and `make test`. Each creates .venv and
# installs vin into it on first use (cached afterwards: the stamp is rebuilt when pyproject changes).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# Defaults of the demo: 64 frames = 8x the chunk length the model was trained on.
FRAMES ?= 64
PROMPT ?= a large red circle and a small white square on a blue striped background

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vin generate --frames $(FRAMES) --prompt "$(PROMPT)" --out outputs/demo.mp4

test: $(STAMP)
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) outputs .pytest_cache .hypothesis

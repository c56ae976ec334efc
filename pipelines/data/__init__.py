"""Raw data: acquisition (download.py, sources.py), decoding (readers.py) and the prepared
format (prepare.py, backbone.py). See docs/outputs.md for the files these produce.

Nothing is imported here: importing one module of the package must not run the others, or every
stage that uses one of them would depend on all of them (dvc.yaml lists each stage's import closure)."""

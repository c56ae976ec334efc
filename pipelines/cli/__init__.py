"""The project's command-line entry points, apart from the library they call.

    edge.py    the wrapper every stage runs its body in: a LabError becomes one `error:` line
    variant_stage.py  the command line of train, evaluate and embed (paths, the stage's own flags)
    repro.py   the main job (make run): choose the protocol, then `dvc repro` the whole lab
    plots.py   DVC's plots as static SVG/PNG files that open offline
    check.py   the params check CI runs on a params change
    deps.py    dvc.yaml's code deps, written from each stage's import closure (make deps)

Nothing is imported here, so running one entry point loads none of the others.
"""

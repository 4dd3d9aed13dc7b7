"""The main job: baseline -> prune, distill, quantize, combined pipeline -> benchmark + flamegraphs ->
serve through the async stack -> worker sizing of the original and the optimized model -> one report.

    make demo                          # = python -m main_job
    python -m main_job --tiny          # minutes-long smoke run (what the tests run)

It sits on top of the four parts: it calls the ``main(args)`` of the scripts the READMEs document (PR3's
``prepare_model`` and ``optimize_pipeline``, PR4's ``benchmark_models`` and ``model_flamegraph``) with the
flags a user would type, and serves the results through PR2's local stack. Nothing below imports it.

- :mod:`main_job.cli`: the flags and ``main(args)``.
- :mod:`main_job.job`: the stages and the stage runner.
- :mod:`main_job.sizing`: PR1's ``size_deployment`` on the benchmark's figures, and the replicas it saves.
- :mod:`main_job.report`: the report (md, html, json) built from the stage summaries and the sizing.
"""

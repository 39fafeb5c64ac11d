"""What the tests share, each written once (docs/testing.md):

- pages.py: the report pages' tables, cell by cell
- stages.py: how a test runs a stage's entry point (as dvc.yaml runs it) and reads which stages DVC ran
- projects.py: the projects the end-to-end tests start from (the synthetic branch reproduced; a tiny CIFAR-10 one)
- ci_profile.py: .ci/profile.py as a module (the CI profile's params, reproduction and regression check)

The scratch project itself (a git + DVC copy, params files, `dvc`/`git`, processes, free ports) is
wdlab/workspace.py, the CIFAR-10 stand-in archive wdlab/cifar10/standin.py, the local Ray cluster
benchmarks/ray_cluster.py, and the MLflow server and its PostgreSQL benchmarks/mlflow_server.py and
benchmarks/postgres.py: the CI profile and the benchmarks use them too, and nothing outside tests/ imports from
tests/.
"""

# The image of the Kubeflow Pipelines v2 / Vertex AI runner (pipelines/kubeflow_v2_runner.py,
# whose default image is this one): every pipeline step and the Trainer's Vertex AI custom job
# run in it. Build and push it to your project (docs/GUIDE.md, "Kubeflow Pipelines v2 /
# Vertex AI"):
#
#   docker build -t gcr.io/PROJECT/lfm4ads:latest .
#   docker push gcr.io/PROJECT/lfm4ads:latest
#
# Based on python:3.10-slim rather than TFX's own image (gcr.io/tfx-oss-public/tfx:1.16.0):
# requirements.lock pins every package the test suite runs with (TFX 1.16 needs Python 3.10,
# as the lock was made on), and installing it with --no-deps over the TFX image would mix it
# with that image's own pins and carry its CUDA layers; this image trains on CPUs. TFX starts
# each step with a command of its own, `python -m
# tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor` (the Vertex AI Trainer:
# `python -m tfx.scripts.run_executor`), which needs only `python` with the lock's tfx.
FROM python:3.10-slim

# Keras 2 (tf-keras) for TensorFlow, set before any step imports it (`common.legacy_keras`
# sets it too, but TFX's executors import TensorFlow before the repository's modules).
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Where the TFX templates put the pipeline's code.
WORKDIR /pipeline

# The lock first, so its layer is rebuilt only when the lock changes. --no-deps: the lock is
# complete and pip resolves nothing, as the Makefile installs it. crcmod and pyfarmhash come as
# sources: the compiler is installed for them and removed in the same layer.
COPY requirements.lock ./
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && pip install --no-cache-dir --upgrade "pip>=24" \
    && pip install --no-cache-dir --no-deps -r requirements.lock \
    && pip check \
    && apt-get purge -y --auto-remove build-essential \
    && rm -rf /var/lib/apt/lists/*

# The repository, importable from any working directory and process (the executors, Beam
# workers) through a .pth file as the Makefile writes: TFX imports `trainer.tfx.*_module`
# and the custom components (`components/`) by name.
COPY . .
RUN echo /pipeline > "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/lfm4ads.pth" \
    && python -c "import trainer.tfx.upstream_module, trainer.tfx.transform_module, \
                         trainer.tfx.ranker_module, pipelines.pipeline"

# Beam's SDK harness (the lock's apache-beam version), so the same image can also run the Beam
# steps' workers on Dataflow (`--sdk_container_image`). Its entry point serves Beam only: TFX
# and Vertex AI give the container their own command (above), which replaces it.
COPY --from=apache/beam_python3.10_sdk:2.59.0 /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]

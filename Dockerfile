# The consumer service, on TensorFlow's GPU image by default (CUDA, cuDNN, TensorFlow inside).
# CPU-only hosts:
#   docker build --build-arg BASE=python:3.11-slim --build-arg TENSORFLOW="tensorflow-cpu>=2.16,<2.22" -t tfstream:cpu .
ARG BASE=tensorflow/tensorflow:2.18.0-gpu
FROM ${BASE}

# Empty: keep the base image's TensorFlow. Otherwise a pip requirement for it.
ARG TENSORFLOW=
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY consumer ./consumer
COPY producer_tools ./producer_tools
# The project and its dependencies, which leave TensorFlow out (it comes with the cpu or gpu extra):
# the base image's is kept, or the one asked for is installed.
RUN pip install --no-cache-dir ${TENSORFLOW:+"$TENSORFLOW"} .

# Never run as root; models are mounted read-only at /models.
RUN useradd --create-home --uid 10001 tfstream
USER tfstream
VOLUME ["/models"]
EXPOSE 9108

# Settings come from TFSTREAM_* variables or a mounted --config file (see the README).
ENTRYPOINT ["python", "-m", "consumer", "run"]

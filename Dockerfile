# The AWS Batch worker image of fanout. PYTHON_VERSION must equal the client's Python
# minor version and the template's PythonRuntime (cloudpickle needs the same minor version):
#   docker build --build-arg PYTHON_VERSION=3.12 -t fanout-worker .
ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/fanout

COPY pyproject.toml README.md ./
COPY client/ client/
COPY functions/ functions/
RUN pip install --no-cache-dir ".[aws]"

RUN useradd --create-home --uid 10001 --user-group fanout
USER fanout

CMD ["python", "-m", "fanout.backends.aws.batch_entry"]

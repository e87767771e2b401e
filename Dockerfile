# The AWS Batch worker image of fanout. PYTHON_VERSION must equal the client's Python
# minor version and the template's PythonRuntime (cloudpickle needs the same minor version).
# Build it for Fargate's platform (x86_64 Linux) on any machine, a Mac included:
#   docker build --platform linux/amd64 --build-arg PYTHON_VERSION=3.12 -t fanout-worker .
ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim
ARG PYTHON_VERSION

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/fanout

# Exactly what the Lambda workers install (Makefile build-*): fanout with the aws extra and
# worker-requirements.txt, so a task behaves the same on either tier.
COPY pyproject.toml README.md worker-requirements.txt ./
COPY client/ client/
COPY functions/ functions/
RUN pip install --no-cache-dir ".[aws]" -r worker-requirements.txt \
    && python client/backends/aws/build_info.py /opt/fanout "${PYTHON_VERSION}" \
        worker-requirements.txt pyproject.toml

RUN useradd --create-home --uid 10001 --user-group fanout
USER fanout

CMD ["python", "-m", "fanout.backends.aws.batch_entry"]

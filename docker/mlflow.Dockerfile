# MLflow tracking server for docker-compose.yml: the project's MLflow pin plus what the official
# image lacks, the PostgreSQL driver (backend store), the S3 client (optional artifact store) and
# Flask-WTF, which the basic-auth app needs (mlflow's `auth` extra), with its config file.
# Built by `docker-compose up --build` (~1 min); runs as an unprivileged user.
FROM python:3.11.7-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install "mlflow[auth]==3.17.2" psycopg2-binary==2.9.13 boto3==1.44.8 \
    && useradd --create-home --uid 1000 mlflow \
    && mkdir /mlartifacts /mlflow-auth && chown mlflow /mlartifacts /mlflow-auth
COPY basic_auth.ini /etc/mlflow/basic_auth.ini

USER mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]

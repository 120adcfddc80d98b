# The factbus sidecar image: `docker build -t factbus-sidecar:0.1.0 .`
# Runs `factbus sidecar --config /etc/factbus/sidecar.toml` (mount the ConfigMap
# there); FACTBUS_TRANSPORT / FACTBUS_STORE override the TOML's [factbus] URLs.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY adapters ./adapters
RUN pip install --no-cache-dir --prefix=/install '.[amqp,kafka,kombu,postgres,sidecar,metrics]'

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --uid 10001 --no-create-home factbus
USER 10001
EXPOSE 8081
ENTRYPOINT ["factbus"]
CMD ["sidecar", "--config", "/etc/factbus/sidecar.toml"]

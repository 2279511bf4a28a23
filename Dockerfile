# Slim image that runs `voice-gateway serve` as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 gateway
COPY --from=build /install /usr/local
COPY config /etc/voice-gateway
WORKDIR /home/gateway
USER gateway
ENV VOICE_GATEWAY_CONFIG=/etc/voice-gateway/gateway.toml \
    VOICE_GATEWAY_HOST=0.0.0.0 \
    VOICE_GATEWAY_PORT=8080 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
CMD ["voice-gateway", "serve"]

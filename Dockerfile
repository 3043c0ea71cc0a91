# relaypool in a container: docker build -t relaypool .
#   docker run -p 127.0.0.1:7777:7777 -v relaypool-data:/data relaypool \
#       --relay wss://relay.damus.io --relay wss://nos.lol
# Arguments after the image name are options of `relaypool run`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY . .
RUN pip install . && rm -rf /src/build

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin relaypool \
    && mkdir -p /data && chown relaypool:relaypool /data

USER relaypool
WORKDIR /data
# The event store (SQLite) and its outbox.
VOLUME ["/data"]
EXPOSE 7777

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:7777/healthz', timeout=4).status == 200 else 1)"]

# In a container the gateway listens on every interface; publish the port
# to 127.0.0.1 only (as above) unless clients come from elsewhere.
ENTRYPOINT ["relaypool", "run", "--listen", "tcp:7777", "--store", "/data/relaypool.db"]
CMD []

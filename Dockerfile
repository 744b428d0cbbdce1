# syntax=docker/dockerfile:1
# ImageioProxy container image (docs/operations.md, "Container").
#   docker build -t imageio-proxy .
# Runs as the non-root user of the .NET images (UID 1654, $APP_UID), works with a read-only root file
# system (nothing is written outside the socket volume), and serves one ticket given as a secret file
# next to a qemu-nbd sidecar that shares /run/imageio-proxy (deploy/compose.yaml, deploy/kubernetes/).
# CI cannot build images (no container engine): it lints this file and runs the `dotnet publish`
# output with this ENTRYPOINT, CMD and ENV (tests/ImageioProxy.Tests/Deploy/ContainerTests.cs).

ARG DOTNET_VERSION=10.0

FROM mcr.microsoft.com/dotnet/sdk:${DOTNET_VERSION} AS build
WORKDIR /src
# Restore first, from the project files only, so that source edits reuse the restore layer.
COPY Directory.Build.props Directory.Packages.props .editorconfig ./
# Every project ImageioProxy references (ContainerTests checks this list against the project files).
COPY src/NbdClient/NbdClient.csproj src/NbdClient/
COPY src/ImageioProxy.Checksums/ImageioProxy.Checksums.csproj src/ImageioProxy.Checksums/
COPY src/ImageioProxy.Client/ImageioProxy.Client.csproj src/ImageioProxy.Client/
COPY src/ImageioProxy/ImageioProxy.csproj src/ImageioProxy/
RUN dotnet restore src/ImageioProxy/ImageioProxy.csproj
COPY src/ src/
RUN dotnet publish src/ImageioProxy/ImageioProxy.csproj --no-restore -c Release -o /app

# Chiseled: no shell, no package manager, non-root by default; hence exec-form instructions only.
FROM mcr.microsoft.com/dotnet/aspnet:${DOTNET_VERSION}-noble-chiseled AS runtime
WORKDIR /app
COPY --from=build --chown=root:root /app /app
# DOTNET_EnableDiagnostics=0: the runtime would otherwise need a writable /tmp for its diagnostics
# socket, which a read-only root lacks (dotnet/runtime#86259). ASPNETCORE_HTTP_PORTS is cleared: the
# listeners come from Remote:* and Monitoring:*. Plain HTTP: TLS ends at the ingress or nginx in front
# (ticket ids are secrets: never expose this port without TLS; see Tls__* to terminate here instead).
ENV DOTNET_EnableDiagnostics=0 \
    ASPNETCORE_HTTP_PORTS= \
    Remote__Host=0.0.0.0 \
    Remote__Port=54322 \
    Tls__Enable=false \
    Local__Enable=false \
    Control__Enable=false \
    Monitoring__Host=0.0.0.0 \
    Monitoring__Port=54323 \
    Logging__Console__FormatterName=json
USER $APP_UID
EXPOSE 54322 54323
STOPSIGNAL SIGTERM
# No curl in runtime images: the service binary probes itself. (No --start-period: dockerfilelint
# 1.8 rejects it; three retries cover the start-up.)
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
    CMD ["/app/ImageioProxy", "probe", "http://127.0.0.1:54323/health/ready"]
ENTRYPOINT ["/app/ImageioProxy"]
# The ticket (JSON, imageio's format) comes as a secret; its uuid is the transfer's credential.
CMD ["--Daemon:TicketFile=/run/secrets/ticket"]

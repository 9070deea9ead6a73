# Builds the eventrouter daemon into a small image.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/eventrouter . && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/eventrouter /usr/local/bin/eventrouter
COPY eventrouter.yaml /etc/eventrouter/eventrouter.yaml
# The ledger (and the embedded broker, when used) keep their files here.
COPY --from=build --chown=nonroot:nonroot /out/data /var/lib/eventrouter/data
WORKDIR /var/lib/eventrouter
ENTRYPOINT ["/usr/local/bin/eventrouter"]
CMD ["run", "--config", "/etc/eventrouter/eventrouter.yaml"]

#!/usr/bin/env bash
# Entry point of the doorless-connector add-on. The Supervisor writes the add-on's options to
# /data/options.json; this turns them into the connector's DOORLESS_* environment (see
# docs/config.md) and replaces itself with the connector.
set -euo pipefail

options="${DOORLESS_OPTIONS_FILE:-/data/options.json}"

if [[ ! -r "${options}" ]]; then
    echo "[doorless] ${options} not found: this script runs inside the Home Assistant add-on." >&2
    exit 1
fi

token="$(jq -r '.token // ""' "${options}")"
upstream="$(jq -r '.upstream // "http://homeassistant:8123"' "${options}")"
log_level="$(jq -r '.log_level // "info"' "${options}")"
# A token pasted from a terminal may carry line breaks or spaces; it never contains any.
token="${token//[[:space:]]/}"

if [[ -z "${token}" ]]; then
    cat >&2 <<'MESSAGE'
[doorless] No enrollment token set.
[doorless] On your VPS run:  doorless-edge site add NAME --hostname YOUR.HOSTNAME
[doorless] (or `doorless-edge site token NAME` for an existing site), then paste the printed
[doorless] token (it starts with dl1.) into this add-on's Configuration tab and start it again.
MESSAGE
    exit 1
fi

case "${log_level}" in
    trace | debug)
        # Detail from doorless itself; the libraries stay at info (quinn at trace is a firehose).
        filter="info,connector=${log_level},doorless_connector=${log_level},transport=${log_level},proto=${log_level}"
        ;;
    info | warn | error)
        filter="${log_level}"
        ;;
    *)
        echo "[doorless] unknown log_level '${log_level}', using info" >&2
        filter="info"
        ;;
esac

export DOORLESS_TOKEN="${token}"
export DOORLESS_UPSTREAM="${upstream}"
export DOORLESS_LOG__FILTER="${filter}"
export DOORLESS_LOG__FORMAT="${DOORLESS_LOG__FORMAT:-text}"

echo "[doorless] starting doorless-connector: upstream ${upstream}, log level ${log_level}" >&2
exec doorless-connector run

# NixOS module for the nix-edge-registry builder: the NixOS counterpart of deploy/builder-service.service and
# deploy/install-builder.sh. Import it from a checkout and set services.nix-edge-registry-builder (deploy/README.md,
# "The builder on NixOS"). NixOS has nix-daemon already; the service user talks to it like any user, through
# NIX_REMOTE=daemon, so it needs no write access to /nix/store and need not be a trusted user.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.nix-edge-registry-builder;
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;
in
{
  options.services.nix-edge-registry-builder = {
    enable = mkEnableOption "the nix-edge-registry builder, which builds container images with Nix for the registry worker";

    source = mkOption {
      # A string keeps a checkout outside the store; a path literal (./nix-edge-registry) copies it in.
      type = types.path;
      default = "/opt/nix-edge-registry";
      description = ''
        A checkout of nix-edge-registry with its runtime dependencies installed and the builder built
        (`npm ci --omit=dev && npm run build:builder`, run with the same Node.js as `nodejs`): the service runs
        `build/builder-service.mjs`.
      '';
    };

    nodejs = mkOption {
      type = types.package;
      default = pkgs.nodejs_22;
      defaultText = literalExpression "pkgs.nodejs_22";
      description = "The Node.js that runs the builder: an LTS line, 22 or 24.";
    };

    environmentFile = mkOption {
      # A string, not a path: a path literal would copy BUILDER_SECRET and the S3 keys into the world-readable store.
      type = types.str;
      default = "/etc/nix-edge-registry/builder.env";
      description = ''
        File of KEY=value settings with the secrets (BUILDER_SECRET, S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY_ID,
        S3_SECRET_ACCESS_KEY); mode 0640, group `group`. Its values override `settings`.
      '';
    };

    dataDir = mkOption {
      type = types.str;
      default = "/var/lib/nix-edge-registry";
      description = "BUILDER_DATA_DIR and the service's home: spooled layers and Nix's fetch cache.";
    };

    user = mkOption {
      type = types.str;
      default = "nix-builder";
      description = "User the service runs as (created by this module when left at nix-builder).";
    };

    group = mkOption {
      type = types.str;
      default = "nix-builder";
      description = "Group the service runs as (created by this module when left at nix-builder).";
    };

    gcSchedule = mkOption {
      type = types.str;
      default = "*-*-* 03:00:00";
      description = ''
        When `builder-service --collect-garbage` runs (a systemd calendar expression, plus up to an hour at random),
        removing from the bucket what the GC_* settings say; "" never runs it.
      '';
    };

    settings = mkOption {
      type = types.attrsOf (types.oneOf [ types.str types.int types.bool ]);
      default = { };
      example = literalExpression ''{ BUILDER_PORT = 8788; NIX_MAX_JOBS = 2; }'';
      description = ''
        Further environment variables of the builder (the README's configuration table, or
        `builder-service --help`). Keep secrets in `environmentFile`: these end up in the Nix store.
      '';
    };
  };

  config = mkIf cfg.enable {
    # The bucket's garbage collection: deploy/builder-gc.service and deploy/builder-gc.timer's counterparts.
    systemd.services.builder-gc = mkIf (cfg.gcSchedule != "") {
      description = "nix-edge-registry: garbage collection of the registry's bucket";
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      environment = {
        BUILDER_DATA_DIR = cfg.dataDir;
        HOME = cfg.dataDir;
      } // lib.mapAttrs (_: value: if lib.isBool value then lib.boolToString value else toString value) cfg.settings;
      serviceConfig = {
        Type = "oneshot";
        User = cfg.user;
        Group = cfg.group;
        EnvironmentFile = cfg.environmentFile;
        WorkingDirectory = cfg.source;
        ExecStart = "${cfg.nodejs}/bin/node --enable-source-maps ${cfg.source}/build/builder-service.mjs --collect-garbage";
        TimeoutStartSec = "30min";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        CapabilityBoundingSet = "";
      };
    };
    systemd.timers.builder-gc = mkIf (cfg.gcSchedule != "") {
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.gcSchedule;
        RandomizedDelaySec = "1h";
        Persistent = true;
      };
    };

    assertions = [
      {
        # The service user cannot reach nix-daemon otherwise, and every build would fail.
        assertion = lib.any (allowed: lib.elem allowed config.nix.settings.allowed-users) [ "*" cfg.user "@${cfg.group}" ];
        message = ''services.nix-edge-registry-builder: nix.settings.allowed-users must include "${cfg.user}" (or "@${cfg.group}") so the builder can use nix-daemon.'';
      }
    ];

    nix.settings = {
      # The builder builds whatever packages pulls ask for: keep those builds pure and apart from the host.
      sandbox = true;
      # At the priority of NixOS's own default ([ "*" ]), so both stay in the list; a list of your own replaces
      # them both, and the assertion above asks for the service user in it.
      allowed-users = lib.mkOptionDefault [ cfg.user ];
    };

    users.users = mkIf (cfg.user == "nix-builder") {
      nix-builder = {
        isSystemUser = true;
        group = cfg.group;
        home = cfg.dataDir;
      };
    };
    users.groups = mkIf (cfg.group == "nix-builder") { nix-builder = { }; };

    systemd.tmpfiles.rules = [ "d ${cfg.dataDir} 0750 ${cfg.user} ${cfg.group} - -" ];

    systemd.services.builder-service = {
      description = "nix-edge-registry builder: builds container images with Nix for the registry worker";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "nix-daemon.socket" "nix-daemon.service" ];
      # nix-build and friends for the builder.
      path = [ config.nix.package cfg.nodejs ];
      environment = {
        BUILDER_DATA_DIR = cfg.dataDir;
        HOME = cfg.dataDir;
        XDG_CACHE_HOME = "${cfg.dataDir}/cache";
        NIX_REMOTE = "daemon";
      } // lib.mapAttrs (_: value: if lib.isBool value then lib.boolToString value else toString value) cfg.settings;
      serviceConfig = {
        User = cfg.user;
        Group = cfg.group;
        EnvironmentFile = cfg.environmentFile;
        WorkingDirectory = cfg.source;
        # What deploy/builder-service runs, with this Node.js rather than whichever node is on PATH.
        ExecStart = "${cfg.nodejs}/bin/node --enable-source-maps ${cfg.source}/build/builder-service.mjs";
        Restart = "on-failure";
        RestartSec = "5s";
        # Exit status 2 is a setting to fix (named in the journal): restarting would not help.
        RestartPreventExitStatus = 2;
        TimeoutStopSec = "30s";
        LimitNOFILE = 65536;

        # The same hardening as deploy/builder-service.service: the builder only reads /nix/store and talks to
        # the daemon's socket; builds run inside the daemon.
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ReadWritePaths = [ cfg.dataDir "-/nix/var/nix/daemon-socket" "-/nix/var/nix/gcroots/per-user" "-/nix/var/nix/profiles/per-user" ];
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictSUIDSGID = true;
        RestrictRealtime = true;
        RestrictNamespaces = true;
        LockPersonality = true;
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        SystemCallArchitectures = "native";
        CapabilityBoundingSet = "";
        # Not MemoryDenyWriteExecute: Node's JIT needs writable and executable memory.
      };
    };
  };
}

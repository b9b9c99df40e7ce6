//! Start-up: the services built in order (presence before the core that sends its
//! NOTIFYs, the registrar with its observers, the proxy with its PBX resolved), state loaded
//! before anything is read from the network, then the control socket, the metrics endpoint
//! and the sockets.

use super::*;

/// What a server runs on besides its config.
pub struct Stores {
    pub bindings: Arc<dyn BindingStore>,
    pub presence: Arc<dyn PresenceStore>,
    /// Calls of the dialog tracker.
    pub dialogs: Arc<dyn crate::storage::DialogStore>,
    pub users: Option<UserFile>,
    /// Key for digest nonces; random when `None` (tests fix it to mint old nonces).
    pub nonce_key: Option<[u8; 32]>,
}

pub async fn start(cfg: &Config, stores: Stores) -> Result<ServerHandle, StartError> {
    let Stores {
        bindings: store,
        presence: presence_store,
        dialogs: dialog_store,
        users: user_file,
        nonce_key,
    } = stores;
    let user_file = user_file.map(Arc::new);
    let limits = Limits {
        max_message: cfg.server.max_message_size,
        max_headers: cfg.server.max_headers,
        max_line: 8 * 1024,
    };
    // Randomness first: without the OS RNG nothing below may start (no guessable fallback).
    let branch_key =
        crate::transaction::BranchKey::load_or_create(&cfg.server.data_dir.join("branch.key"))
            .map_err(StartError::Random)?;
    let ids = || Ids::new().map_err(StartError::Random);
    let events = EventBus::default();
    let clock = Clock::new();
    // The presence server is built before the core that sends its NOTIFYs: it gets the
    // sending half of the outbox, the core's task the receiving half.
    let (outbox, outbox_rx) = tokio::sync::mpsc::unbounded_channel();
    let presence = Presence::with_outbox(
        cfg,
        presence_store,
        events.clone(),
        clock,
        ids()?,
        branch_key.clone(),
        Some(outbox),
    );
    // The presence client's requests go to the core (built below) over a channel.
    let (sip_calls, sip_calls_rx) = tokio::sync::mpsc::unbounded_channel();
    let link = Arc::new(CoreLink {
        calls: sip_calls,
        branch_key: branch_key.clone(),
        ids: ids()?,
        advertised_host: advertised_host(cfg),
    });
    let pua = Pua::new(cfg, presence.clone(), ids()?, link);
    // pua_usrloc hears every binding change from the registrar itself (not the lossy bus);
    // it publishes nothing until the presence state is loaded (`usrloc.start` below).
    let usrloc = Usrloc::new(cfg, pua.clone(), clock);
    // Shared lines (pua_bla) hear the same changes: their member phones' subscriptions.
    let bla = crate::bla::Bla::new(cfg, pua.clone(), clock, events.clone());
    let observer: Arc<dyn crate::registrar::BindingObserver> =
        Arc::new(crate::bla::Observers(vec![usrloc.clone(), bla.clone()]));
    let flush_times = store.flush_times();
    let registrar = Registrar::with_observer(cfg, store, events.clone(), clock, Some(observer));
    let live = registrar.load().await?;
    tracing::info!(bindings = live, "bindings loaded");
    let (transport, listeners) = Transport::bind(
        &cfg.server.listen,
        limits,
        crate::transport::TcpLimits {
            idle: Duration::from_secs(cfg.server.tcp_idle_timeout),
            max_conns: cfg.server.max_tcp_connections,
            max_per_source: cfg.server.max_tcp_connections_per_source,
            message_timeout: Duration::from_secs(cfg.server.tcp_message_timeout),
        },
    )
    .await?;
    // Bound with the SIP sockets, before any task starts: a taken port stops the start.
    let metrics_listener =
        match cfg.control.metrics {
            Some(addr) => Some(crate::control::metrics::bind(addr).await.map_err(|e| {
                StartError::Metrics {
                    addr,
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
    if cfg.auth.mode == AuthMode::Open {
        tracing::warn!("*** OPEN MODE: [auth] mode = \"open\" — REGISTER is accepted from anyone without a password. Use only on a closed lab network. ***");
    }
    for warning in cfg.warnings() {
        tracing::warn!("{warning}");
    }
    let key = match nonce_key {
        Some(k) => NonceKey::new(k),
        None => NonceKey::random().map_err(StartError::Random)?,
    };
    let rules = crate::proxy::Proxy::new(cfg, transport.local_addrs(), advertised_host(cfg));
    let upstream_dns = match rules.upstream.clone() {
        Some(u) if crate::proxy::uri_addr(&u).is_none() => {
            let resolver: Box<dyn crate::proxy::upstream::SipResolver> =
                match crate::proxy::upstream::HickoryResolver::from_system() {
                    Ok(r) => Box::new(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the system's DNS configuration; [proxy] upstream is looked up without SRV");
                        Box::new(crate::proxy::upstream::GetAddrInfo)
                    }
                };
            Some(Arc::new(crate::proxy::upstream::UpstreamDns::new(
                u,
                resolver,
                Duration::from_secs(cfg.proxy.upstream_refresh),
            )))
        }
        _ => None,
    };
    let upstream_resolved = match &upstream_dns {
        Some(dns) => dns
            .lookup(
                || tokio::time::Instant::now().into_std(),
                |p, a| can_send(&transport, p, a),
            )
            .await
            .map(|(proto, addr)| peer_to(&transport, proto, addr)),
        None => None,
    };
    let proxy =
        crate::proxy::ProxyService::new(rules, &cfg.dialog, dialog_store, upstream_resolved);
    let (stored_notifies, stored_rx) = tokio::sync::mpsc::unbounded_channel();
    let core = Arc::new(Core {
        limits,
        transport: transport.clone(),
        auth: Authenticator::new(cfg, key, user_file.clone()),
        registrar: registrar.clone(),
        presence: presence.clone(),
        pua: pua.clone(),
        bla: bla.clone(),
        clock,
        ids: ids()?,
        server_header: cfg.server.server_header.clone(),
        transactions: Mutex::new(ServerTransactions::new(
            Timers::default(),
            cfg.server.max_transactions,
        )),
        clients: Mutex::new(ClientTransactions::new(
            Timers::default(),
            cfg.server.max_transactions,
        )),
        owners: Mutex::new(crate::hashing::map()),
        timers_changed: Notify::new(),
        advertised_host: advertised_host(cfg),
        proxy,
        dialoginfo: cfg.pua.dialoginfo.clone(),
        max_lifetime: cfg.dialog.max_lifetime,
        events: events.clone(),
        branch_key,
        stored_notifies,
        received: Default::default(),
        rate_limit: Mutex::new(crate::ratelimit::RateLimiter::new(
            cfg.server.rate_limit_per_source,
            cfg.server.rate_limit_burst,
        )),
        rate_limited: Default::default(),
        upstream_dns: upstream_dns.clone(),
        answering: Default::default(),
        requests: Default::default(),
        flush_times,
    });
    let mut tasks = vec![tokio::spawn(registrar.clone().run_expiry())];
    tasks.push(tokio::spawn(core.clone().run_stored_notifies(stored_rx)));
    tasks.push(tokio::spawn(core.clone().run_outbox(outbox_rx)));
    tasks.push(tokio::spawn(core.clone().run_sip_calls(sip_calls_rx)));
    tasks.push(tokio::spawn(core.clone().run_timers()));
    tasks.push(tokio::spawn(presence.clone().run_timers()));
    tasks.push(tokio::spawn(presence.clone().run_log_summary()));
    tasks.push(tokio::spawn(core.clone().run_log_throttle()));
    if let Some(dns) = upstream_dns {
        tasks.push(tokio::spawn(core.clone().run_upstream_refresh(dns)));
    }
    // Users from the user file are read here and by a watcher, never on the receive path.
    if let Some(file) = &user_file {
        tasks.push(file.clone().watch(crate::storage::users::RECHECK).await);
    }
    let file_users = user_file.as_ref().map(|f| f.loaded()).unwrap_or_default();
    for warning in cfg.user_warnings(&file_users) {
        tracing::warn!("{warning}");
    }
    // Presence state is loaded before anything is read from the network: a refresh or an
    // If-Match PUBLISH that waited while we were down must find its subscription or
    // publication, not get 481/412. The sockets are bound, so the restart NOTIFYs can leave;
    // their answers wait in the socket buffers.
    let (publications, subscriptions) = presence.load()?;
    tracing::info!(publications, subscriptions, "presence state loaded");
    // Presence from registrations matches the loaded bindings before any request is read.
    usrloc.start(&registrar);
    tasks.push(tokio::spawn(
        usrloc.clone().run_extensions(Arc::downgrade(&registrar)),
    ));
    // Shared lines: the appearance table from the loaded publications, then every
    // registered member phone subscribed again (they answer with their full state).
    bla.start(&registrar);
    tasks.push(tokio::spawn(bla.clone().run_timers()));
    // Calls after presence: a call that ended while we were down publishes `terminated`
    // over the lamp state just loaded.
    let live_calls = core.restore_calls()?;
    tasks.push(tokio::spawn(core.clone().run_dialog_timers()));
    // The control socket once the core and its state are complete, before the first SIP
    // message is read: a socket that cannot be created (another server answers on it) stops
    // the start before this server has handled anything.
    let control = start_control(cfg, &core, &events)?;
    transport.start(listeners, core.clone());
    if live_calls > 0 {
        core.probe_calls();
    }
    for (proto, addr) in transport.local_addrs() {
        tracing::info!(
            "listening on {}:{addr}",
            if proto == Proto::Udp { "udp" } else { "tcp" }
        );
    }
    let metrics = metrics_listener.and_then(|l| l.local_addr().ok().map(|a| (l, a)));
    let metrics = metrics.map(|(listener, addr)| {
        tracing::info!("metrics on http://{addr}/metrics");
        tasks.push(tokio::spawn(crate::control::metrics::serve(
            listener,
            core.clone(),
        )));
        addr
    });
    Ok(ServerHandle {
        core,
        events,
        tasks,
        metrics,
        control,
    })
}

/// Starts the control socket at `[control] socket`, or `control.sock` in the data directory.
/// Without a data directory (the in-memory store of tests) and no socket named, there is no
/// place for it: `None`.
fn start_control(
    cfg: &Config,
    core: &Arc<Core>,
    events: &EventBus,
) -> Result<Option<crate::control::server::ControlServer>, StartError> {
    let data_dir = &cfg.server.data_dir;
    if cfg.control.socket.as_os_str().is_empty() && !data_dir.is_dir() {
        tracing::debug!(data_dir = %data_dir.display(), "no data directory: no control socket");
        return Ok(None);
    }
    let methods: Arc<dyn crate::control::Methods> = crate::control::api::Api::new(core.clone());
    let control = crate::control::server::start(
        &cfg.control_socket(),
        Some(data_dir.as_path()).filter(|d| d.is_dir()),
        crate::control::server::Limits::from_config(&cfg.control),
        methods,
        events.clone(),
    )?;
    Ok(Some(control))
}

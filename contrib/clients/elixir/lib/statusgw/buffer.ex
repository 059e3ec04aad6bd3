defmodule StatusGW.Buffer do
  @moduledoc """
  The supervised process that sends updates to the gateway.

  Callers never wait for it: `put/2` checks the bound on an `:atomics`
  counter and casts. The process keeps a queue and sends it to
  `/api/v1/status/bulk` in requests of `batch_size`, or `flush_interval_ms`
  after the first update of a partial batch, each request in a task so the
  queue keeps taking updates meanwhile. 429 and 503 (whole or per update)
  are sent again after their Retry-After, an unreachable gateway with
  backoff; every update carries an idempotency key, so a retry is never
  delivered twice. On shutdown it sends what is queued within
  `shutdown_timeout_ms`.

  Events, `:telemetry`-style (sent to `:telemetry` when it is loaded, and to
  the `on_event` callback, a 3-arity function, when configured):
  `[:statusgw, :batch, :sent]` (count, duplicates, filtered),
  `[:statusgw, :batch, :retry]` (count, delay_ms), `[:statusgw, :update, :dropped]`
  (count, dropped total), `[:statusgw, :update, :rejected]` (count; code, message).
  """

  use GenServer
  require Logger
  alias StatusGW.JSON

  @retry_max_ms 5_000
  # :atomics slots: held (queued or in a request), the idempotency counter, closed
  @held 1
  @seq 2
  @closed 3
  @stat_keys [:sent, :duplicates, :filtered, :dropped, :rejected, :retried, :unsent]

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))

  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :name, __MODULE__),
      start: {__MODULE__, :start_link, [opts]},
      shutdown: Keyword.get(opts, :shutdown_timeout_ms, 5_000) + 1_000
    }
  end

  @doc "Queue one update map; false when it was dropped. Never raises, never blocks."
  def put(server \\ __MODULE__, update) do
    case :persistent_term.get({__MODULE__, server}, nil) do
      nil ->
        Logger.warning("statusgw: update dropped: the StatusGW.Buffer #{inspect(server)} is not running")
        false

      %{atomics: a} = shared ->
        enqueue(server, a, shared, update)
    end
  end

  defp enqueue(server, a, shared, update) do
    key = "#{shared.prefix}-#{:atomics.add_get(a, @seq, 1)}"
    item = update |> Map.put(:idempotency_key, key) |> with_source(shared.source) |> JSON.encode!()

    cond do
      :atomics.get(a, @closed) == 1 -> dropped(shared)
      :atomics.add_get(a, @held, 1) > shared.buffer_size -> :atomics.sub(a, @held, 1) && dropped(shared)
      true -> GenServer.cast(server, {:put, item}) == :ok
    end
  end

  defp with_source(u, nil), do: u
  defp with_source(u, source), do: Map.put(u, :source, source)

  # One log line every 5 s at most while updates are being dropped.
  defp dropped(shared) do
    :counters.add(shared.counters, index(:dropped), 1)
    total = :counters.get(shared.counters, index(:dropped))
    now = System.monotonic_time(:millisecond)
    last = :atomics.get(shared.log_at, 1)

    if now - last >= 5_000 and :atomics.compare_exchange(shared.log_at, 1, last, now) == :ok,
      do: Logger.warning("statusgw: buffer full or client closed: dropped=#{total} (capacity=#{shared.buffer_size})")

    emit(shared.on_event, [:statusgw, :update, :dropped], %{count: 1, dropped: total}, %{})
    false
  end

  @doc "The counters, and what is held now."
  def stats(server \\ __MODULE__) do
    case :persistent_term.get({__MODULE__, server}, nil) do
      nil ->
        %{}

      shared ->
        @stat_keys
        |> Map.new(&{&1, :counters.get(shared.counters, index(&1))})
        |> Map.put(:queued, :atomics.get(shared.atomics, @held))
    end
  end

  @doc "Wait until everything queued so far is answered; true when it was within timeout."
  def flush(server \\ __MODULE__, timeout \\ 5_000), do: call(server, {:flush, timeout}, timeout)

  @doc "Stop taking updates and send what is queued within timeout; true when nothing was left unsent."
  def close(server \\ __MODULE__, timeout \\ 5_000), do: call(server, {:close, timeout}, timeout)

  defp call(server, msg, timeout) do
    GenServer.call(server, msg, timeout + 1_000)
  catch
    :exit, _ -> false
  end

  defp index(key), do: Enum.find_index(@stat_keys, &(&1 == key)) + 1

  # -- the process ---------------------------------------------------------

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    # an HTTP client of its own, so no other request of the application
    # (a tail's endless stream) ever queues in front of a batch
    {:ok, httpc} = :inets.start(:httpc, [profile: :"statusgw_buffer_#{System.unique_integer([:positive])}"], :stand_alone)
    env = Application.get_all_env(:statusgw)
    get = fn k -> Keyword.get(opts, k, Keyword.get(env, k)) end
    name = Keyword.get(opts, :name, __MODULE__)

    shared = %{
      atomics: :atomics.new(3, signed: true),
      log_at: :atomics.new(1, signed: true),
      counters: :counters.new(length(@stat_keys), [:write_concurrency]),
      prefix: Base.encode16(:crypto.strong_rand_bytes(8), case: :lower),
      source: get.(:source),
      buffer_size: get.(:buffer_size) || 10_000,
      on_event: get.(:on_event)
    }

    :atomics.put(shared.log_at, 1, System.monotonic_time(:millisecond) - 10_000)
    :persistent_term.put({__MODULE__, name}, shared)
    batch = (get.(:batch_size) || 100) |> max(1) |> min(1000)

    {:ok,
     %{
       name: name,
       shared: shared,
       url: String.trim_trailing(get.(:url) || "http://127.0.0.1:4000", "/") <> "/api/v1/status/bulk",
       api_key: get.(:api_key),
       httpc: httpc,
       interval: get.(:flush_interval_ms) || 100,
       timeout: get.(:request_timeout_ms) || 5_000,
       shutdown: get.(:shutdown_timeout_ms) || 5_000,
       queue: :queue.new(),
       limit: batch,
       task: nil,
       timer: nil,
       paused: false,
       waiters: [],
       backoff: 0,
       down: false
     }}
  end

  @impl true
  def handle_cast({:put, item}, s), do: {:noreply, schedule(%{s | queue: :queue.in(item, s.queue)})}

  @impl true
  def handle_call({:flush, timeout}, from, s) do
    if idle?(s) do
      {:reply, true, s}
    else
      t = Process.send_after(self(), {:flush_deadline, from}, timeout)
      {:noreply, schedule(%{s | waiters: [{from, t} | s.waiters]})}
    end
  end

  def handle_call({:close, timeout}, from, s) do
    :atomics.put(s.shared.atomics, @closed, 1)
    handle_call({:flush, timeout}, from, s)
  end

  @impl true
  def handle_info(:tick, s), do: {:noreply, send_batch(%{s | timer: nil})}
  def handle_info(:resume, s), do: {:noreply, schedule(%{s | paused: false})}

  def handle_info({:flush_deadline, from}, s) do
    GenServer.reply(from, false)
    {:noreply, %{s | waiters: Enum.reject(s.waiters, fn {f, _} -> f == from end)}}
  end

  def handle_info({ref, answer}, %{task: {ref, batch}} = s) do
    Process.demonitor(ref, [:flush])
    {retry, delay, s} = settle(%{s | task: nil}, batch, answer)
    s = %{s | queue: Enum.reduce(Enum.reverse(retry), s.queue, &:queue.in_r/2)}

    s =
      if retry != [] and delay > 0,
        do: (Process.send_after(self(), :resume, delay) && %{s | paused: true}),
        else: s

    {:noreply, s |> schedule() |> answer_waiters()}
  end

  def handle_info({:DOWN, ref, :process, _, reason}, %{task: {ref, batch}} = s) do
    handle_info({ref, {:error, reason}}, %{s | task: {ref, batch}})
  end

  def handle_info({:EXIT, _, _}, s), do: {:noreply, s}
  def handle_info(_, s), do: {:noreply, s}

  @impl true
  def terminate(_reason, s) do
    :atomics.put(s.shared.atomics, @closed, 1)
    deadline = System.monotonic_time(:millisecond) + s.shutdown
    s = await_task(s, deadline)
    drain(s, deadline)
  end

  defp await_task(%{task: nil} = s, _), do: s

  defp await_task(%{task: {ref, batch}} = s, deadline) do
    receive do
      {^ref, answer} -> requeue_after(s, batch, answer)
    after
      max(0, deadline - System.monotonic_time(:millisecond)) -> s
    end
  end

  defp requeue_after(s, batch, answer) do
    {retry, _, s} = settle(%{s | task: nil}, batch, answer)
    %{s | queue: Enum.reduce(Enum.reverse(retry), s.queue, &:queue.in_r/2)}
  end

  # Send what is queued before the deadline, one request at a time.
  defp drain(s, deadline) do
    left = deadline - System.monotonic_time(:millisecond)

    cond do
      :queue.is_empty(s.queue) ->
        :ok

      left <= 0 ->
        n = :queue.len(s.queue)
        :counters.add(s.shared.counters, index(:unsent), n)
        Logger.warning("statusgw: shut down with updates unsent: unsent=#{n}")

      true ->
        {batch, rest} = take(s)
        answer = post(s.httpc, s.url, s.api_key, batch, min(s.timeout, left))
        {retry, delay, s} = settle(%{s | queue: rest}, batch, answer)
        if retry != [], do: Process.sleep(min(delay, max(0, deadline - System.monotonic_time(:millisecond))))
        drain(%{s | queue: Enum.reduce(Enum.reverse(retry), s.queue, &:queue.in_r/2)}, deadline)
    end
  end

  defp idle?(s), do: :queue.is_empty(s.queue) and s.task == nil

  defp answer_waiters(s) do
    if idle?(s) do
      Enum.each(s.waiters, fn {from, t} ->
        Process.cancel_timer(t)
        GenServer.reply(from, true)
      end)

      %{s | waiters: []}
    else
      s
    end
  end

  # Send now when a batch is full (or a flush waits, or it is closing), else
  # after the interval.
  defp schedule(%{task: nil, paused: false} = s) do
    n = :queue.len(s.queue)

    cond do
      n == 0 -> s
      n >= s.limit or s.waiters != [] or :atomics.get(s.shared.atomics, @closed) == 1 -> send_batch(s)
      s.timer == nil -> %{s | timer: Process.send_after(self(), :tick, s.interval)}
      true -> s
    end
  end

  defp schedule(s), do: s

  defp send_batch(%{task: nil, paused: false} = s) do
    if s.timer, do: Process.cancel_timer(s.timer)

    if :queue.is_empty(s.queue) do
      %{s | timer: nil}
    else
      {batch, rest} = take(s)
      %{url: url, api_key: key, timeout: t, httpc: httpc} = s
      task = Task.async(fn -> post(httpc, url, key, batch, t) end)
      %{s | queue: rest, task: {task.ref, batch}, timer: nil}
    end
  end

  defp send_batch(s), do: s

  defp take(s) do
    {q1, q2} = :queue.split(min(s.limit, :queue.len(s.queue)), s.queue)
    {:queue.to_list(q1), q2}
  end

  defp post(httpc, url, api_key, batch, timeout) do
    body = ["[", Enum.intersperse(batch, ","), "]"] |> IO.iodata_to_binary()
    headers = [{~c"user-agent", ~c"statusgw-elixir"}]
    headers = if api_key, do: [{~c"authorization", ~c"Bearer " ++ to_charlist(api_key)} | headers], else: headers
    request = {to_charlist(url), headers, ~c"application/json", body}

    case :httpc.request(:post, request, [timeout: timeout, connect_timeout: timeout], [body_format: :binary], httpc) do
      {:ok, {{_, status, _}, resp_headers, resp_body}} -> {status, resp_headers, resp_body}
      {:error, reason} -> {:error, reason}
    end
  end

  # What an answer means for each update of the batch: {retry, delay_ms, state}.
  # No answer (refused, lost) sends every update again: their idempotency
  # keys make a second delivery impossible.
  defp settle(s, batch, answer) do
    :atomics.sub(s.shared.atomics, @held, length(batch))
    s = note_reachable(s, answer)
    settle_answer(s, batch, answer)
  end

  defp settle_answer(s, batch, {202, _, body}), do: results(%{s | backoff: 0}, batch, body)

  defp settle_answer(s, batch, {status, headers, body}) when status in [408, 429] or status >= 500,
    do: retry_all(s, batch, retry_after(headers, body))

  defp settle_answer(s, batch, {:error, _}), do: retry_all(s, batch, nil)

  defp settle_answer(s, batch, {413, _, _}) when length(batch) > 1,
    do: {batch, 0, %{s | limit: max(1, div(length(batch), 2))} |> held(batch)}

  defp settle_answer(s, batch, {status, _, body}) do
    count(s, :rejected, length(batch))
    Logger.warning("statusgw: gateway refused #{length(batch)} updates: status=#{status} #{error_text(body)}")
    emit(s.shared.on_event, [:statusgw, :update, :rejected], %{count: length(batch)}, %{status: status})
    {[], 0, s}
  end

  defp retry_all(s, batch, delay) do
    {delay, s} =
      if delay,
        do: {delay, s},
        else:
          (backoff = min(@retry_max_ms, max(100, s.backoff * 2))
           {div(backoff, 2) + :rand.uniform(div(backoff, 2)), %{s | backoff: backoff}})

    count(s, :retried, length(batch))
    emit(s.shared.on_event, [:statusgw, :batch, :retry], %{count: length(batch), delay_ms: delay}, %{})
    {batch, delay, held(s, batch)}
  end

  # updates going back into the queue are held again
  defp held(s, items) do
    :atomics.add(s.shared.atomics, @held, length(items))
    s
  end

  defp results(s, batch, body) do
    case safe_decode(body) do
      %{"results" => results} when is_list(results) ->
        {retry, delay, tally} =
          Enum.zip(batch, results)
          |> Enum.reduce({[], 0, %{sent: 0, duplicates: 0, filtered: 0}}, &result/2)

        Enum.each(tally, fn {k, n} -> count(s, k, n) end)
        count(s, :retried, length(retry))
        emit(s.shared.on_event, [:statusgw, :batch, :sent], Map.put(tally, :count, length(batch)), %{})
        {Enum.reverse(retry), delay, held(s, retry)}

      _ ->
        count(s, :sent, length(batch))
        {[], 0, s}
    end
  end

  defp result({item, %{"error" => %{"retry_after" => ra}}}, {retry, delay, tally}) when is_number(ra),
    do: {[item | retry], max(delay, round(ra * 1000)), tally}

  defp result({_, %{"error" => err}}, acc) do
    Logger.warning("statusgw: update refused: #{err["code"]}: #{err["message"]}")
    {retry, delay, tally} = acc
    {retry, delay, Map.update(tally, :rejected, 1, &(&1 + 1))}
  end

  defp result({_, r}, {retry, delay, tally}) do
    key = cond do
      r["dropped"] -> :filtered
      r["duplicate"] -> :duplicates
      true -> :sent
    end

    {retry, delay, Map.update!(tally, key, &(&1 + 1))}
  end

  defp note_reachable(s, answer) do
    down = match?({:error, _}, answer)

    cond do
      down and not s.down ->
        Logger.warning("statusgw: gateway unreachable, updates kept and retried: url=#{s.url} error=#{inspect(elem(answer, 1))}")

      s.down and not down ->
        Logger.info("statusgw: gateway reachable again: url=#{s.url}")

      true ->
        :ok
    end

    %{s | down: down}
  end

  defp count(_s, _key, 0), do: :ok
  defp count(s, key, n), do: :counters.add(s.shared.counters, index(key), n)

  defp retry_after(headers, body) do
    with {_, v} <- List.keyfind(headers, ~c"retry-after", 0),
         {secs, _} <- Float.parse(to_string(v)) do
      round(secs * 1000)
    else
      _ ->
        case safe_decode(body) do
          %{"error" => %{"retry_after" => ra}} when is_number(ra) -> round(ra * 1000)
          _ -> nil
        end
    end
  end

  defp safe_decode(body) do
    JSON.decode!(body)
  rescue
    _ -> nil
  catch
    _, _ -> nil
  end

  defp error_text(body) do
    case safe_decode(body) do
      %{"error" => %{"code" => c, "message" => m}} -> "#{c}: #{m}"
      _ -> inspect(body)
    end
  end

  @doc false
  def emit(on_event, event, measurements, metadata) do
    if Code.ensure_loaded?(:telemetry), do: apply(:telemetry, :execute, [event, measurements, metadata])
    if is_function(on_event, 3), do: on_event.(event, measurements, metadata)
    :ok
  rescue
    e -> Logger.error("statusgw: on_event raised: #{Exception.message(e)}")
  end
end

defmodule StatusGW do
  @moduledoc """
  Status updates for a statusgw gateway, with the Status API of the system
  statusgw grew from.

      StatusGW.info(conversation_id, "Processing complete", %{items: 100})

      start = System.monotonic_time(:millisecond)
      # ... do work ...
      StatusGW.with_timing(conversation_id, :info, "Import complete", start, %{records_imported: 1000})

      StatusGW.tool(conversation_id, "Executing search_code",
        StatusGW.build_tool_metadata("search_code", %{query: "foo"}))

  Every call returns at once and never raises: the update goes to the
  supervised `StatusGW.Buffer`, which sends it in bulk (see there for
  retries, idempotency and overflow). Configure the `:statusgw`
  application: `url`, `api_key`, `source`, `buffer_size` (10,000),
  `batch_size` (100), `flush_interval_ms` (100), `request_timeout_ms`,
  `shutdown_timeout_ms` (5,000), `on_event`.
  """

  require Logger
  alias StatusGW.{Buffer, Metadata}

  @categories [:engine, :tool, :workflow, :progress, :error, :info, :planning]

  @doc "The seven categories, each with a helper of its name."
  def categories, do: @categories

  @doc """
  Queue one update. `conversation_id` nil publishes a system-wide update.
  Returns true when queued, false when dropped (buffer full, not running).
  """
  def update(conversation_id, category, text, metadata \\ %{}) do
    u = %{conversation_id: conversation_id, category: category, text: text}
    Buffer.put(if(metadata == %{} or metadata == nil, do: u, else: Map.put(u, :metadata, metadata)))
  rescue
    e -> not_queued("update", e)
  catch
    kind, e -> not_queued("update", {kind, e})
  end

  for cat <- @categories do
    @doc "An update of category `#{cat}`."
    def unquote(cat)(conversation_id, text, metadata \\ %{}),
      do: update(conversation_id, unquote(cat), text, metadata)
  end

  @doc """
  An update with `duration_ms` and `duration_human` since `start_time`, a
  `System.monotonic_time(:millisecond)` reading taken when the work began.
  """
  def with_timing(conversation_id, category, text, start_time, metadata \\ %{}) do
    ms = System.monotonic_time(:millisecond) - start_time
    update(conversation_id, category, text, Metadata.timing(ms, metadata))
  rescue
    e -> not_queued("with_timing", e)
  end

  @doc ~S"""
  A progress update: current, total, percentage, progress "c/t", and the
  text with " (30%)" appended.
  """
  def progress_percentage(conversation_id, text, current, total, metadata \\ %{}) do
    {md, text} = Metadata.progress(text, current, total, metadata)
    update(conversation_id, :progress, text, md)
  rescue
    e -> not_queued("progress_percentage", e)
  end

  @doc """
  Queue several updates of one conversation: `{category, text}`,
  `{category, text, metadata}` or maps with those keys. The number queued.
  """
  def bulk_update(conversation_id, updates) do
    Enum.count(updates, fn
      {category, text} -> update(conversation_id, category, text)
      {category, text, md} -> update(conversation_id, category, text, md)
      %{} = u -> update(conversation_id, u[:category], u[:text], u[:metadata] || %{})
    end)
  end

  @doc "`update/4` when condition holds and there is a conversation."
  def maybe_update(conversation_id, condition, category, text, metadata \\ %{})
  def maybe_update(nil, _, _, _, _), do: false
  def maybe_update(_, condition, _, _, _) when condition in [nil, false], do: false
  def maybe_update(conversation_id, _, category, text, metadata), do: update(conversation_id, category, text, metadata)

  defdelegate build_llm_metadata(model, provider, extra \\ %{}), to: Metadata
  defdelegate build_tool_metadata(tool_name, params, extra \\ %{}), to: Metadata
  defdelegate build_workflow_metadata(workflow_name, completed_steps, total_steps, extra \\ %{}), to: Metadata
  defdelegate build_error_metadata(error_type, message, extra \\ %{}), to: Metadata

  @doc "Wait until everything queued so far is answered; true when it was within timeout."
  def flush(timeout \\ 5_000), do: Buffer.flush(Buffer, timeout)

  @doc "sent, duplicates, filtered, dropped, rejected, retried, unsent, and queued now."
  def stats, do: Buffer.stats(Buffer)

  @doc """
  Follow conversations: the caller (or `to:`) receives
  `{:statusgw, tail_pid, :status_update | :gap, map}`; see `StatusGW.Tail`.
  """
  def subscribe(conversations, opts \\ []), do: StatusGW.Tail.start_link(conversations, Keyword.put_new(opts, :to, self()))

  defp not_queued(what, e) do
    Logger.error("statusgw: #{what} not queued: #{inspect(e)}")
    false
  end
end

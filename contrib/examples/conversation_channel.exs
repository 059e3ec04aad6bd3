# A conversation channel, as the original system's reported it (in its own
# language, with the Elixir client): message received (length, user),
# processing start (context), response sent (timing, response size), an
# error while processing, and a conversation reset.
#
#   cd contrib/clients/elixir && mix run ../../examples/conversation_channel.exs -- \
#       --url http://127.0.0.1:4000 --conversation demo-1
#
# The client is configured by the :statusgw application's environment,
# set here from the command line before it starts.

argv = Enum.drop_while(System.argv(), &(&1 == "--"))
{opts, _, _} = OptionParser.parse(argv, strict: [url: :string, conversation: :string, key: :string])
url = opts[:url] || System.get_env("STATUSGW_URL", "http://127.0.0.1:4000")
conv = opts[:conversation] || "demo-#{System.unique_integer([:positive])}"

Application.stop(:statusgw)
Application.put_env(:statusgw, :url, url)
Application.put_env(:statusgw, :api_key, opts[:key] || System.get_env("STATUSGW_API_KEY"))
Application.put_env(:statusgw, :source, "conversation-channel")
{:ok, _} = Application.ensure_all_started(:statusgw)
IO.puts("conversation #{conv} on #{url}; watch it with:  statusgw tail #{conv} --url #{url}")

defmodule ConversationChannel do
  # handle_in/3 of a Phoenix channel, reduced to what it reports.
  def handle_message(conv, user, text) do
    StatusGW.info(conv, "Message received", %{length: String.length(text), user_id: user})
    start = System.monotonic_time(:millisecond)
    StatusGW.engine(conv, "Processing message", %{context_messages: 12, model: "gpt-4"})

    try do
      if text =~ "crash", do: raise(ArgumentError, "cannot parse the attached file")
      Process.sleep(50)
      response = "You said: " <> text
      StatusGW.with_timing(conv, :info, "Response sent", start, %{response_length: String.length(response)})
      {:reply, response}
    rescue
      e ->
        StatusGW.error(conv, "Processing failed", StatusGW.build_error_metadata(:processing_error, Exception.message(e), %{user_id: user}))
        {:error, e}
    end
  end

  def reset(conv, user) do
    StatusGW.info(conv, "Conversation reset", %{user_id: user})
  end
end

ConversationChannel.handle_message(conv, "user-42", "How do I tail a conversation?")
ConversationChannel.handle_message(conv, "user-42", "please crash on this file")
ConversationChannel.reset(conv, "user-42")

drained = StatusGW.flush(10_000)
stats = StatusGW.stats()
IO.puts("sent=#{stats.sent} rejected=#{stats.rejected} dropped=#{stats.dropped}")
unless drained and stats.rejected == 0, do: System.halt(1)

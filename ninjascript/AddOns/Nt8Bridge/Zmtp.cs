#region Using declarations
using System;
using System.Collections.Generic;
using System.IO;
using System.Net.Sockets;
using System.Text;
using System.Threading;
#endregion

// A ZMTP 3.1 DEALER over one TCP connection (rfc.zeromq.org/spec/37, NULL mechanism), so that the
// NinjaScript needs no third-party DLL (NetMQ drags half of .NET Standard into bin\Custom).
// This is the wire layer only: one connection, blocking reads, PING answered with PONG. Reconnect
// with backoff and the bounded send queue that never blocks NT8's threads sit above it (Link.cs).
// NetworkStream has no buffer of its own, so frames are assembled in a write buffer and read
// through a read buffer: one system call per message (or per batch) instead of one per field.
namespace NinjaTrader.NinjaScript.AddOns.Nt8Bridge
{
	public sealed class ZmtpException : Exception
	{
		/// <summary>True when the peer broke the ZMTP framing (oversize or malformed frame), false when the
		/// connection merely failed or closed: the first is a protocol error worth counting, the second is not.</summary>
		public readonly bool IsProtocolViolation;

		public ZmtpException(string message) : base(message) { }

		public ZmtpException(string message, bool protocolViolation) : base(message) { IsProtocolViolation = protocolViolation; }
	}

	public sealed class ZmtpDealer : IDisposable
	{
		private const byte FlagMore = 1, FlagLong = 2, FlagCommand = 4, FlagsReserved = 0xF8;
		private const int GreetingSize = 64;
		private const int BufferSize = 64 * 1024;
		private readonly object sendLock = new object();
		private TcpClient tcp;
		private NetworkStream stream;
		private readonly byte[] wbuf = new byte[BufferSize];
		private int wlen;
		private readonly byte[] rbuf = new byte[BufferSize];
		private int rpos, rlen;
		private long lastActivity;

		/// <summary>Largest frame accepted from the peer; a larger one closes the connection (garbage or hostile).</summary>
		public long MaxFrameBytes = 1 << 20;
		/// <summary>Read timeout once connected (Timeout.Infinite by default): a peer that stops in the middle
		/// of a frame would otherwise block the reading thread for good.</summary>
		public int ReadTimeoutMs = Timeout.Infinite;
		/// <summary>Write timeout once connected; 0 keeps the connect timeout. A peer that takes nothing for this
		/// long fails the send instead of blocking the writing thread.</summary>
		public int WriteTimeoutMs;
		public string PeerSocketType { get; private set; }
		public long PingsAnswered { get; private set; }

		/// <summary>Stopwatch timestamp of the last frame read (commands such as PING and PONG included), or of
		/// the connection: what a liveness check compares with, since any frame proves the peer alive.</summary>
		public long LastActivity { get { return Volatile.Read(ref lastActivity); } }

		/// <summary>Milliseconds since LastActivity.</summary>
		public double IdleMs
		{
			get { return (System.Diagnostics.Stopwatch.GetTimestamp() - LastActivity) * 1000.0 / System.Diagnostics.Stopwatch.Frequency; }
		}

		/// <summary>Connect to "tcp://host:port", exchange greetings and READY; throws ZmtpException on failure.</summary>
		public void Connect(string endpoint, int timeoutMs)
		{
			string hostPort = endpoint.StartsWith("tcp://", StringComparison.Ordinal) ? endpoint.Substring(6) : endpoint;
			int colon = hostPort.LastIndexOf(':');
			if (colon < 0)
				throw new ZmtpException("endpoint '" + endpoint + "' is not tcp://host:port");
			int port;
			if (!int.TryParse(hostPort.Substring(colon + 1), out port))
				throw new ZmtpException("endpoint '" + endpoint + "' has no port number");
			tcp = new TcpClient { NoDelay = true };
			try
			{
				Handshake(endpoint, hostPort.Substring(0, colon), port, timeoutMs);
			}
			catch
			{
				Dispose();  // a failed attempt must not leak its socket: a link retries for hours
				throw;
			}
		}

		private void Handshake(string endpoint, string host, int port, int timeoutMs)
		{
			IAsyncResult ar = tcp.BeginConnect(host, port, null, null);
			if (!ar.AsyncWaitHandle.WaitOne(timeoutMs))
				throw new ZmtpException("no connection to " + endpoint + " within " + timeoutMs + " ms");
			tcp.EndConnect(ar);
			stream = tcp.GetStream();
			Touch();
			stream.ReadTimeout = timeoutMs;
			stream.WriteTimeout = timeoutMs;
			byte[] greeting = new byte[GreetingSize];
			greeting[0] = 0xFF;
			greeting[9] = 0x7F;
			greeting[10] = 3;  // version 3.1
			greeting[11] = 1;
			Encoding.ASCII.GetBytes("NULL", 0, 4, greeting, 12);
			stream.Write(greeting, 0, GreetingSize);  // as-server (byte 32) and filler stay 0
			stream.Flush();
			byte[] peer = ReadExactly(GreetingSize);
			if (peer[0] != 0xFF || peer[9] != 0x7F)
				throw new ZmtpException("the peer is not a ZeroMQ socket (bad greeting signature)");
			if (peer[10] < 3)
				throw new ZmtpException("the peer speaks ZMTP " + peer[10] + ".x; 3.0 or later is needed");
			if (Encoding.ASCII.GetString(peer, 12, 20).TrimEnd('\0') != "NULL")
				throw new ZmtpException("the peer asks for a security mechanism other than NULL");
			SendCommand("READY", Metadata("Socket-Type", "DEALER"));
			byte[] ready = ReadFrame(out byte flags);
			if ((flags & FlagCommand) == 0 || CommandName(ready) != "READY")
				throw new ZmtpException("the peer did not send READY");
			Dictionary<string, string> props = ParseMetadata(ready, 1 + ready[0]);
			string type;
			PeerSocketType = props.TryGetValue("Socket-Type", out type) ? type : "";
			if (PeerSocketType != "ROUTER" && PeerSocketType != "DEALER")
				throw new ZmtpException("a DEALER cannot talk to a " + PeerSocketType + " socket");
			stream.ReadTimeout = ReadTimeoutMs;
			if (WriteTimeoutMs != 0)
				stream.WriteTimeout = WriteTimeoutMs;
		}

		/// <summary>Send one message of several frames; safe from any thread.</summary>
		public void Send(byte[][] frames)
		{
			lock (sendLock)
			{
				NetworkStream s = Stream();
				PutMessage(s, frames);
				FlushWrites(s);
			}
		}

		/// <summary>Send several messages in as few writes as possible; safe from any thread. On an exception
		/// an unknown prefix of them has been written.</summary>
		public void SendMany(IList<byte[][]> messages)
		{
			lock (sendLock)
			{
				NetworkStream s = Stream();
				foreach (byte[][] frames in messages)
					PutMessage(s, frames);
				FlushWrites(s);
			}
		}

		/// <summary>Half-close: the peer reads everything sent so far, then end-of-stream. Closing a socket that
		/// still has unread input resets the connection instead, and the peer may lose the last message (BYE).</summary>
		public void ShutdownSend()
		{
			TcpClient t = tcp;
			if (t != null)
				t.Client.Shutdown(SocketShutdown.Send);
		}

		/// <summary>The next message, or null when none starts within timeoutMs. Answers PING; skips other commands.</summary>
		public byte[][] Receive(int timeoutMs)
		{
			List<byte[]> parts = new List<byte[]>();
			// one deadline for the whole call: PINGs answered on the way must not restart the wait
			long deadline = System.Diagnostics.Stopwatch.GetTimestamp() + (long)timeoutMs * System.Diagnostics.Stopwatch.Frequency / 1000;
			while (true)
			{
				long leftUs = (deadline - System.Diagnostics.Stopwatch.GetTimestamp()) * 1000000 / System.Diagnostics.Stopwatch.Frequency;
				TcpClient t = tcp;
				if (t == null)
					throw new ZmtpException("the connection is closed");
				// bytes already in the read buffer are not seen by Poll
				if (parts.Count == 0 && rpos == rlen && !t.Client.Poll((int)Math.Min(int.MaxValue, Math.Max(0, leftUs)), SelectMode.SelectRead))
					return null;
				byte flags;
				byte[] body = ReadFrame(out flags);
				if ((flags & FlagCommand) != 0)
				{
					if (CommandName(body) == "PING")
						Pong(body);
					continue;
				}
				parts.Add(body);
				if ((flags & FlagMore) == 0)
					return parts.ToArray();
			}
		}

		/// <summary>Send a ZMTP PING (TTL in deciseconds, context echoed by the peer's PONG).</summary>
		public void Ping(ushort ttlDeciseconds, byte[] context)
		{
			byte[] data = new byte[2 + context.Length];
			data[0] = (byte)(ttlDeciseconds >> 8);
			data[1] = (byte)ttlDeciseconds;
			Buffer.BlockCopy(context, 0, data, 2, context.Length);
			SendCommand("PING", data);
		}

		private void Pong(byte[] ping)
		{
			int contextAt = 1 + ping[0] + 2;  // name, then a 2-byte TTL, then the context
			int n = Math.Max(0, ping.Length - contextAt);
			byte[] context = new byte[n];
			if (n > 0)
				Buffer.BlockCopy(ping, contextAt, context, 0, n);
			SendCommand("PONG", context);
			PingsAnswered++;
		}

		private void SendCommand(string name, byte[] data)
		{
			byte[] body = new byte[1 + name.Length + data.Length];
			body[0] = (byte)name.Length;
			Encoding.ASCII.GetBytes(name, 0, name.Length, body, 1);
			Buffer.BlockCopy(data, 0, body, 1 + name.Length, data.Length);
			lock (sendLock)
			{
				NetworkStream s = Stream();
				PutFrame(s, body, FlagCommand);
				FlushWrites(s);
			}
		}

		private NetworkStream Stream()
		{
			NetworkStream s = stream;
			if (s == null || tcp == null)
				throw new ZmtpException("the connection is closed");
			return s;
		}

		private void PutMessage(NetworkStream s, byte[][] frames)
		{
			for (int i = 0; i < frames.Length; i++)
				PutFrame(s, frames[i], i < frames.Length - 1 ? FlagMore : (byte)0);
		}

		// Appends one frame to the write buffer (under sendLock); a body too large for it goes straight out.
		private void PutFrame(NetworkStream s, byte[] body, byte flags)
		{
			if (wlen + 9 + body.Length > BufferSize)
				FlushWrites(s);
			if (body.Length > 255)
			{
				wbuf[wlen++] = (byte)(flags | FlagLong);
				long n = body.Length;
				for (int i = 7; i >= 0; i--)
					wbuf[wlen++] = (byte)(n >> (8 * i));  // network byte order
			}
			else
			{
				wbuf[wlen++] = flags;
				wbuf[wlen++] = (byte)body.Length;
			}
			if (wlen + body.Length > BufferSize)
			{
				FlushWrites(s);
				s.Write(body, 0, body.Length);
				return;
			}
			Buffer.BlockCopy(body, 0, wbuf, wlen, body.Length);
			wlen += body.Length;
		}

		private void FlushWrites(NetworkStream s)
		{
			int n = wlen;
			wlen = 0;  // a failed write leaves the connection unusable anyway: never resend half a buffer
			if (n > 0)
				s.Write(wbuf, 0, n);
		}

		private byte[] ReadFrame(out byte flags)
		{
			flags = ReadExactly(1)[0];
			if ((flags & FlagsReserved) != 0)
				throw Broken("the peer sent a frame with reserved flag bits set (0x" + flags.ToString("X2") + "): not ZMTP");
			long size;
			if ((flags & FlagLong) != 0)
			{
				byte[] b = ReadExactly(8);
				size = 0;
				for (int i = 0; i < 8; i++)
					size = (size << 8) | b[i];
			}
			else
			{
				size = ReadExactly(1)[0];
			}
			if (size < 0 || size > MaxFrameBytes)
				throw Broken("the peer sent a frame of " + size + " bytes (limit " + MaxFrameBytes + "); connection closed");
			byte[] body = ReadExactly((int)size);
			Touch();
			return body;
		}

		// The peer broke the framing: nothing after this point can be trusted, so the connection is closed.
		private ZmtpException Broken(string text)
		{
			Dispose();
			return new ZmtpException(text, true);
		}

		private void Touch() { Volatile.Write(ref lastActivity, System.Diagnostics.Stopwatch.GetTimestamp()); }

		private byte[] ReadExactly(int n)
		{
			NetworkStream s = stream;
			if (s == null)
				throw new ZmtpException("the connection is closed");
			byte[] buf = new byte[n];
			int got = 0;
			while (got < n)
			{
				if (rpos == rlen)
				{
					if (n - got >= BufferSize)
					{
						// a large body goes straight into its array
						int d = s.Read(buf, got, n - got);
						if (d <= 0)
							throw new ZmtpException("the peer closed the connection");
						got += d;
						continue;
					}
					rpos = 0;
					rlen = s.Read(rbuf, 0, BufferSize);
					if (rlen <= 0)
					{
						rlen = 0;
						throw new ZmtpException("the peer closed the connection");
					}
				}
				int take = Math.Min(n - got, rlen - rpos);
				Buffer.BlockCopy(rbuf, rpos, buf, got, take);
				rpos += take;
				got += take;
			}
			return buf;
		}

		private string CommandName(byte[] body)
		{
			if (body.Length == 0 || body[0] + 1 > body.Length)
				throw Broken("malformed command frame");
			return Encoding.ASCII.GetString(body, 1, body[0]);
		}

		private static byte[] Metadata(string name, string value)
		{
			byte[] v = Encoding.ASCII.GetBytes(value);
			byte[] m = new byte[1 + name.Length + 4 + v.Length];
			m[0] = (byte)name.Length;
			Encoding.ASCII.GetBytes(name, 0, name.Length, m, 1);
			int at = 1 + name.Length;
			m[at] = (byte)(v.Length >> 24);
			m[at + 1] = (byte)(v.Length >> 16);
			m[at + 2] = (byte)(v.Length >> 8);
			m[at + 3] = (byte)v.Length;
			Buffer.BlockCopy(v, 0, m, at + 4, v.Length);
			return m;
		}

		private static Dictionary<string, string> ParseMetadata(byte[] body, int at)
		{
			Dictionary<string, string> props = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
			while (at < body.Length)
			{
				int nameLen = body[at];
				if (at + 1 + nameLen + 4 > body.Length)
					throw new ZmtpException("malformed READY metadata");
				string name = Encoding.ASCII.GetString(body, at + 1, nameLen);
				at += 1 + nameLen;
				int valueLen = (body[at] << 24) | (body[at + 1] << 16) | (body[at + 2] << 8) | body[at + 3];
				at += 4;
				if (valueLen < 0 || at + valueLen > body.Length)
					throw new ZmtpException("malformed READY metadata");
				props[name] = Encoding.ASCII.GetString(body, at, valueLen);
				at += valueLen;
			}
			return props;
		}

		/// <summary>Close the connection; safe from any thread, and a read blocked on another thread then fails.</summary>
		public void Dispose()
		{
			TcpClient t = Interlocked.Exchange(ref tcp, null);
			if (t != null)
				t.Close();
		}
	}
}
